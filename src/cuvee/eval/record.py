"""`cuvee train --eval-suite`: the fine-tune and its base evaluated on the same suites once
training is done, the figures written into the fine-tune's manifest (``evaluation``) and its
MODEL_CARD.md, so whoever picks the model up sees whether tuning helped. Evaluation's job (it
runs after training, from the CLI), so it lives here, above train, not in train/."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cuvee.progress import Reporter
from cuvee.store import ModelStore, write_manifest

if TYPE_CHECKING:
    from cuvee.config import Settings

CARD_HEADING = "## Evaluation"


def check_suites(settings: Settings, suites: list[str]) -> None:
    """Resolve every suite before training starts: a typo fails now, not after the run."""
    from cuvee.eval.suites import resolve_suite

    for spec in suites:
        resolve_suite(spec, settings)


def evaluate_and_record(
    settings: Settings, name: str, suites: list[str], limit: int | None, reporter: Reporter
) -> dict[str, Any]:
    from cuvee.eval.runner import run_evaluation

    store = ModelStore(settings.models_dir)
    stored = store.get(name)
    base = stored.manifest.parent
    models = [base, name] if base and store.exists(base) else [name]
    document = run_evaluation(settings, models, suites, limit=limit, reporter=reporter).document
    record = {
        "models": models,
        "limit": limit,
        "suites": {
            label: {
                "version": info.get("version"),
                "items": info.get("items"),
                "metrics": {
                    model: document["results"].get(model, {}).get(label, {}).get("metrics", {})
                    for model in models
                },
            }
            for label, info in document["suites"].items()
        },
    }
    manifest = stored.manifest.model_copy(update={"evaluation": record})
    write_manifest(stored.path, manifest)
    card = stored.path / "MODEL_CARD.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8").split(f"\n{CARD_HEADING}\n")[0].rstrip("\n")
        card.write_text(text + "\n\n" + card_section(record) + "\n", encoding="utf-8")
    return record


def card_section(record: dict[str, Any]) -> str:
    models = record["models"]
    lines = [CARD_HEADING, ""]
    scope = f" (first {record['limit']} items of each suite)" if record.get("limit") else ""
    lines.append(f"Measured by `cuvee train --eval-suite` when training ended{scope}.")
    for label, suite in record["suites"].items():
        lines += ["", f"### {label} (v{suite['version']}, {suite['items']} items)", ""]
        lines.append("| metric | " + " | ".join(models) + " |")
        lines.append("|---" * (len(models) + 1) + "|")
        metrics = list(dict.fromkeys(m for model in models for m in suite["metrics"][model]))
        for metric in metrics:
            cells = []
            for model in models:
                value = suite["metrics"][model].get(metric)
                cells.append("-" if value is None else f"{value:.3f}")
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
