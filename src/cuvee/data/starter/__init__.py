"""The starter data set shipped with cuvee: instruction/response pairs written for this project,
under its own licence (Apache-2.0), so a model trained on it may be used commercially. Records
marked ``"split": "heldout"`` are kept for evaluation and never trained on."""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

from cuvee.data.formats import read_file
from cuvee.data.records import Conversation
from cuvee.errors import DataError

LICENCE = "Apache-2.0"
# The tasks the set covers; each has its own file, <category>.jsonl.
CATEGORIES = (
    "open_qa",
    "brainstorming",
    "rewriting",
    "support_summary",
    "classification",
    "extraction",
    "closed_qa",
    "context_refusal",
    "format_constrained",
)
SPLITS = ("train", "heldout", "all")


def starter_files() -> list[Path]:
    root = files(__name__)
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".jsonl"))


def load_starter(split: str = "train") -> list[Conversation]:
    """The starter records of one split ("train", "heldout" or "all"), in a stable order."""
    if split not in SPLITS:
        raise DataError(
            f"unknown starter split {split!r}", hint=f"choose one of {', '.join(SPLITS)}"
        )
    records: list[Conversation] = []
    for path in starter_files():
        with as_file(path) as real:
            result = read_file(real, "dolly")
        if result.problems:
            raise DataError(f"bundled starter data is damaged: {result.problems[0]}")
        records += [r for r in result.records if split == "all" or (r.split or "train") == split]
    return records


HELDOUT_SUITE = "starter-heldout.jsonl"


def write_heldout_suite(path: Path) -> int:
    """The held-out records as a `cuvee eval` tasks file scored by ROUGE-L against the
    reference answer (``--suite tasks=PATH``): how close a model comes to what the starter set
    teaches, on records no fine-tune saw. Returns the number of records."""
    import json

    rows = []
    for record in load_starter("heldout"):
        messages = record.messages()
        prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        reference = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
        rows.append({"task": "summarise", "prompt": prompt, "reference": reference})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return len(rows)


def write_split(path: Path, split: str = "train") -> int:
    """The records of one split as OpenAI-format JSONL with the set's licence in the sidecar:
    what `cuvee data augment` and `cuvee data pairs` read (`cuvee quickstart --preference`).
    Returns the number of records."""
    from cuvee.data.writers import write_jsonl, write_sidecar

    count = write_jsonl(load_starter(split), path, "openai")
    write_sidecar(path, licence=LICENCE, source=f"cuvee starter set ({split} split)")
    return count
