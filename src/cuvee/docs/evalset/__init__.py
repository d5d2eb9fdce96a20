"""An evaluation set for document answering, written for this project (its licence): twenty
documents of fictional organisations in English and French (policies, manuals, meeting notes,
support tickets, news-like reports, release notes, service contracts) and questions over them
in ``qa.jsonl`` (the format of :mod:`cuvee.docs.evaluate`), each labelled with its language,
its kind (number, name, date, yes_no, list, split, paraphrase, unanswerable) and its half
(``dev``, which tuning may look at, or ``heldout``, which it may not)."""

from __future__ import annotations

from pathlib import Path

EVALSET = Path(__file__).parent
