"""IFEval's ``detectable_content`` instructions: a postscript, and square-bracket
placeholders."""

from __future__ import annotations

import random
import re
import zlib

from cuvee.data.constraints.base import Constraint, Kwargs, register
from cuvee.data.constraints.text import _plural, _spelled

_POSTSCRIPT_MARKERS = ("P.S.", "P.P.S")
_POSTSCRIPT_NOTES = (
    "Let me know if you would like more detail on any part of this.",
    "Feel free to ask if anything here is unclear.",
    "I am happy to expand on any of these points.",
    "If you have a follow-up question just ask.",
)


def _postscript_pattern(marker: str) -> re.Pattern[str]:
    marker = marker.strip().lower()
    # IFEval's spellings for its two standard markers: "p.s." and "p. p. s" variants.
    if marker == "p.s.":
        body = r"p\.\s?s\."
    elif marker == "p.p.s":
        body = r"p\.\s?p\.\s?s"
    else:
        body = re.escape(marker)
    # Stricter than IFEval: the marker must open a line (bold or italic allowed) and be
    # followed by some text, not merely appear somewhere.
    return re.compile(r"^[ \t*_>]*" + body + r"[^\n]*\w", flags=re.MULTILINE)


@register("detectable_content:postscript")
class Postscript(Constraint):
    def phrasings(self, kwargs: Kwargs) -> list[str]:
        marker = kwargs["postscript_marker"]
        return [
            "At the end of your response, please explicitly add a postscript starting with "
            f"{marker}",
            f'After the main answer, add a postscript on a new line that opens with "{marker}".',
            f'Please finish with a short extra note beginning with "{marker}" on its own line.',
            f'Your answer must close with a postscript introduced by "{marker}".',
            f'Add a "{marker}" note at the very end.',
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        return {"postscript_marker": rng.choice(_POSTSCRIPT_MARKERS)} if response.strip() else None

    def transform(self, response: str, kwargs: Kwargs) -> str:
        if self.check(response, kwargs):
            return response
        # Chosen from the text rather than an rng so transform stays a pure function of kwargs.
        note = _POSTSCRIPT_NOTES[zlib.crc32(response.encode()) % len(_POSTSCRIPT_NOTES)]
        return f"{response.rstrip()}\n\n{kwargs['postscript_marker']} {note}"

    def check(self, response: str, kwargs: Kwargs) -> bool:
        return bool(_postscript_pattern(kwargs["postscript_marker"]).search(response.lower()))


# A square-bracketed field to fill in ("[Your Name]", "[date]"); not "[1]" citations, not
# "[text](url)" links, not "[x]" checkboxes.
_PLACEHOLDER_RE = re.compile(r"\[[A-Za-z][^\[\]\n]{1,40}\](?!\()")
_MAX_PLACEHOLDERS = 6


@register("detectable_content:number_placeholders")
class NumberPlaceholders(Constraint):
    """Only for responses that are already templates: the bound is met by their own
    placeholders. Turning the names and dates of a real answer into placeholders would
    contradict instructions that state them ("Reply to Sam...").

    Stricter than IFEval, which counts every "[...]" including links and citations.
    """

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        n = int(kwargs["num_placeholders"])
        noun = _plural(n, "placeholder")
        return [
            f"Leave at least {n} {noun} in square brackets, such as [date], for details to be "
            "filled in later.",
            f"Use {n} or more fill-in fields written in square brackets, like [company name].",
            f"Please keep at least {_spelled(n)} bracketed {noun}, for example [address], for "
            "details that are not known yet.",
            f"Your answer must contain at least {n} {noun} of the form [field].",
            f"At least {_spelled(n)} [square-bracket] {noun}.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        most = min(len(_PLACEHOLDER_RE.findall(response)), _MAX_PLACEHOLDERS)
        if most == 0:
            return None
        return {"num_placeholders": rng.randint(max(1, most - 2), most)}

    def transform(self, response: str, kwargs: Kwargs) -> str:
        return response

    def check(self, response: str, kwargs: Kwargs) -> bool:
        return len(_PLACEHOLDER_RE.findall(response)) >= int(kwargs["num_placeholders"])
