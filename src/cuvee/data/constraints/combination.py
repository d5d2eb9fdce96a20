"""IFEval's ``combination`` instructions: repeat the request before answering."""

from __future__ import annotations

import random

from cuvee.data.constraints.base import Constraint, Kwargs, register
from cuvee.data.constraints.text import _has_code_block, count_words

# Longer requests (an embedded document) would make the repetition most of the answer.
_MAX_REPEATED_WORDS = 60


@register("combination:repeat_prompt")
class RepeatPrompt(Constraint):
    """The answer opens with the request, verbatim, then a blank line and the original answer.
    `prompt_to_repeat` is the instruction without the constraint sentence, as in IFEval."""

    needs_instruction = True

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        return [
            "Before you answer, copy the request above exactly as written, word for word, and "
            "only then give your answer. Write nothing before the copied request, and leave "
            "this sentence out of the copy.",
            "Start your reply by restating the request above verbatim, without this sentence, "
            "then answer it; put nothing in front of the restated request.",
            "Please begin with an exact copy of the request (not including this instruction) "
            "and follow it with your answer, with nothing ahead of the copy.",
            "Your response must open with the request repeated word for word, minus this "
            "sentence, and only after that give the answer itself.",
            "Request first, copied verbatim and without this sentence; then your answer.",
        ]

    def sample_kwargs(
        self, response: str, rng: random.Random, instruction: str | None = None
    ) -> Kwargs | None:
        prompt = (instruction or "").strip()
        if not prompt or not response.strip() or _has_code_block(prompt):
            return None
        if count_words(prompt) > _MAX_REPEATED_WORDS:
            return None
        return {"prompt_to_repeat": prompt}

    def transform(self, response: str, kwargs: Kwargs) -> str:
        prompt = str(kwargs["prompt_to_repeat"]).strip()
        if self.check(response, kwargs):
            return response
        return f"{prompt}\n\n{response.strip()}"

    def check(self, response: str, kwargs: Kwargs) -> bool:
        # IFEval's rule (case-insensitive prefix), and stricter: an answer must follow.
        text, prompt = response.strip().lower(), str(kwargs["prompt_to_repeat"]).strip().lower()
        return bool(prompt) and text.startswith(prompt) and bool(text[len(prompt) :].strip())
