"""IFEval's ``startend`` instructions: an exact end phrase, and the whole response in double
quotes."""

from __future__ import annotations

import random

from cuvee.data.constraints.base import Constraint, Kwargs, register

_END_PHRASES = (
    "Any other questions?",
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "Hope this helps.",
    "That is all for now.",
    "I hope this answers your question.",
)


@register("startend:end_checker")
class EndChecker(Constraint):
    def phrasings(self, kwargs: Kwargs) -> list[str]:
        phrase = kwargs["end_phrase"]
        return [
            f"Finish your response with this exact phrase {phrase}. "
            "No other words should follow this phrase.",
            f'The very last words of your answer must be "{phrase}", exactly as written here, '
            "with nothing after them.",
            f"Please close with this precise phrase and let nothing follow it: {phrase}",
            f'Make "{phrase}" the final phrase of your reply, word for word, and add nothing '
            "after it.",
            f'End on exactly "{phrase}" and stop there.',
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        return {"end_phrase": rng.choice(_END_PHRASES)} if response.strip() else None

    def transform(self, response: str, kwargs: Kwargs) -> str:
        body = response.rstrip()
        phrase = str(kwargs["end_phrase"]).strip()
        return body if body.endswith(phrase) else f"{body}\n\n{phrase}"

    def check(self, response: str, kwargs: Kwargs) -> bool:
        # Case-sensitive, unlike IFEval: the instruction says "this exact phrase".
        phrase = str(kwargs["end_phrase"]).strip()
        return bool(phrase) and response.rstrip().endswith(phrase)


@register("startend:quotation")
class Quotation(Constraint):
    def phrasings(self, kwargs: Kwargs) -> list[str]:
        return [
            "Wrap your entire response with double quotation marks.",
            'Put the whole reply inside double quotes, so that it begins and ends with a " '
            "character.",
            "Please enclose the complete answer in one pair of double quotation marks.",
            "Your answer must start with a double quotation mark and end with one.",
            "All of it in double quotes, from start to finish.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        return {} if response.strip() else None

    def transform(self, response: str, kwargs: Kwargs) -> str:
        text = response.strip()
        return text if self.check(text, kwargs) else f'"{text}"'

    def check(self, response: str, kwargs: Kwargs) -> bool:
        text = response.strip()
        return len(text) > 1 and text[0] == '"' and text[-1] == '"'
