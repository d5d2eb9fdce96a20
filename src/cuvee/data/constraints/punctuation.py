"""IFEval's ``punctuation`` instructions: no commas."""

from __future__ import annotations

import random
import re

from cuvee.data.constraints.base import Constraint, Kwargs, register
from cuvee.data.constraints.text import _has_code_block

# Commas between digits that are followed by exactly three digits are thousands separators.
_THOUSANDS_COMMA_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# A comma followed by whitespace (or ending the text) is clause or list punctuation.
_PROSE_COMMA_RE = re.compile(r",(?=\s|$)")


def _strip_commas(text: str) -> str:
    text = _THOUSANDS_COMMA_RE.sub("", text)
    return _PROSE_COMMA_RE.sub("", text)


@register("punctuation:no_comma")
class NoComma(Constraint):
    """Commas are deleted rather than replaced.

    English stays readable without them ("In 2023 the city of Paris France welcomed 47000000
    visitors"), whereas substitutes misfire: "; " wrecks "However, we", " and " wrecks
    "Paris, France", " - " reads as a list in disguise. Thousands separators are removed too.
    Responses with other commas (code, "1,2" coordinates, CSV) are skipped since deleting those
    changes meaning.
    """

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        return [
            "In your entire response, refrain from the use of any commas.",
            "Do not put a single comma anywhere in the answer.",
            "Please write your reply without any commas at all.",
            "Your answer must contain zero commas, so write large numbers as 5000 rather "
            "than 5,000.",
            "No commas, anywhere.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        if _has_code_block(response) or "," in _strip_commas(response):
            return None
        return {} if response.strip() else None

    def transform(self, response: str, kwargs: Kwargs) -> str:
        # The last replace only matters for text sample_kwargs rejects; it keeps the output valid.
        return _strip_commas(response).replace(",", " ")

    def check(self, response: str, kwargs: Kwargs) -> bool:
        return "," not in response
