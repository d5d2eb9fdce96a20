"""Where a fine-tuned model came from, and what one may do with it.

The lineage goes into the model's manifest (``cuvee.json``) and, in prose, into ``MODEL_CARD.md``:
the base (name, weights sha256, licence), every data file (path, sha256, records, licence,
authors), the resolved recipe, seed, library versions, hardware, time, tokens, cost, losses and
contributors. Commercial use is decided from the base's and the data's licences: forbidden if
any forbids it, unknown if any is undeclared or unrecognised."""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from cuvee.licences import Licence, combined_commercial_use, commercial_use_label


@dataclass(frozen=True)
class DataSource:
    path: str
    sha256: str
    records: int
    licence: Licence
    authors: tuple[str, ...] = ()
    declared_by: str = "none"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "records": self.records,
            "licence": self.licence.model_dump(),
            "licence_declared_by": self.declared_by,
            "authors": list(self.authors),
        }


@dataclass(frozen=True)
class CommercialUse:
    allowed: bool | None
    reasons: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return commercial_use_label(self.allowed)


def commercial_use(base_name: str, base_licence: Licence, data: list[DataSource]) -> CommercialUse:
    """The combined verdict with a reason for each restriction or unknown."""
    reasons: list[str] = []

    def judge(what: str, lic: Licence) -> None:
        if lic.commercial_use is False:
            reasons.append(f"{what} is licensed {lic.id}, which forbids commercial use")
        elif lic.commercial_use is None:
            if lic.id == "unknown":
                reasons.append(f"{what} declares no licence (unknown, not assumed free)")
            else:
                reasons.append(f"{what} is licensed {lic.id}, whose commercial terms are unknown")

    judge(f"base model {base_name}", base_licence)
    for src in data:
        judge(f"data {src.path}", src.licence)
    allowed = combined_commercial_use([base_licence, *(s.licence for s in data)])
    # Only the reasons that decide the verdict: with a prohibition, unknowns are beside the point.
    if allowed is False:
        reasons = [r for r in reasons if "forbids" in r]
    return CommercialUse(allowed, reasons)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("cuvee", "torch", "transformers", "peft", "tokenizers", "accelerate"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def contributors(data: list[DataSource], authors: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for name in [*(a for s in data for a in s.authors), *authors]:
        if name.strip():
            seen.setdefault(name.strip(), None)
    return list(seen)


def recipe_upgraded(recipe: dict[str, Any]) -> dict[str, Any]:
    """A lineage's recipe as this version names its knobs: models trained before preference
    tuning recorded ``method: lora|full`` for what is now ``adapter``."""
    if recipe.get("method") in ("lora", "full"):
        return {**recipe, "method": "sft", "adapter": recipe["method"]}
    return recipe


def method_label(recipe: dict[str, Any]) -> str:
    """How a model was trained, in a few words: ``lora`` or ``full`` for instruction tuning
    (as before preference tuning existed), ``dpo (sigmoid) on lora`` and the like after it."""
    recipe = recipe_upgraded(recipe)
    adapter = recipe.get("adapter", "lora")
    method = recipe.get("method", "sft")
    if method == "sft":
        return adapter
    if method == "dpo":
        method = f"dpo ({recipe.get('loss_type', 'sigmoid')})"
    return f"{method} on {adapter}"


def _fmt_loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


_LOSS_NAMES = {
    "sigmoid": "DPO (sigmoid loss)",
    "ipo": "DPO with the IPO loss",
    "simpo": "SimPO-style DPO (length-normalised, no reference)",
    "orpo": "ORPO (odds ratio, no reference)",
    "kto": "KTO (desirable / undesirable answers)",
}
# metric key -> how the card names it
_PREFERENCE_METRICS = {
    "loss": "loss",
    "accuracy": "reward accuracy",
    "margin": "reward margin (chosen - rejected)",
    "rewards_chosen": "reward of chosen answers",
    "rewards_rejected": "reward of rejected answers",
    "rewards_desirable": "reward of desirable answers",
    "rewards_undesirable": "reward of undesirable answers",
    "kl": "KTO reference point (batch KL estimate)",
    "drift": "drift from the parent (log-ratio per answer token)",
    "nll": "NLL of chosen answers (per token)",
}


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _examples_text(examples: dict[str, Any]) -> str:
    parts = [
        f"{examples[k]} {what}"
        for k, what in (
            ("pairs", "pairs"),
            ("desirable", "desirable answers"),
            ("undesirable", "undesirable answers"),
        )
        if examples.get(k)
    ]
    shown = ", ".join(parts) or "none"
    if examples.get("truncated"):
        shown += f" ({examples['truncated']} truncated to the sequence length)"
    return shown


def preference_section(
    recipe: dict[str, Any], preference: dict[str, Any], data: list[dict[str, Any]]
) -> list[str]:
    """The card's account of a preference run: the loss, the reference and the metrics on the
    held-out examples before and after training, and on the last training steps."""
    loss = preference["loss"]
    reference = preference.get("reference")
    if reference:
        against = (
            f"against the parent model `{reference['parent']}`, whose log-probabilities of the "
            f"{reference['answers']} answers were computed once before training"
            + (
                f" (in {reference['seconds']:.0f} s, counted in the run's time)"
                if reference.get("seconds")
                else ""
            )
            + " and cached with the run (no second model held in memory)"
        )
    else:
        against = "without a reference model"
    examples = preference.get("examples") or {}
    licences = sorted({d["licence"]["id"] for d in data})
    lines = [
        "## Preference tuning",
        "",
        f"- objective: {_LOSS_NAMES.get(loss, loss)}, beta {preference['beta']}"
        + (
            f", plus {recipe['nll_weight']} x the chosen answers' NLL per token (RPO)"
            if recipe.get("nll_weight")
            else ""
        )
        + f", {against}",
        f"- training examples: {_examples_text(examples)}",
        f"- preference data licence: {', '.join(licences)}",
        "",
    ]
    before, after, train = (
        preference.get("eval_before") or {},
        preference.get("eval") or {},
        preference.get("train") or {},
    )
    shown = [k for k in _PREFERENCE_METRICS if k in after or k in before or k in train]
    if shown:
        lines += [
            "| metric | held-out, before | held-out, after | training (last 10 steps) |",
            "|---|---|---|---|",
        ]
        for key in shown:
            lines.append(
                f"| {_PREFERENCE_METRICS[key]} | {_fmt(before.get(key))} | "
                f"{_fmt(after.get(key))} | {_fmt(train.get(key))} |"
            )
        lines += [
            "",
            "Rewards are beta times the log-probability ratio of the model to its parent "
            "(SimPO: beta times the mean log-probability per token; ORPO: the log-odds of it); "
            "the reward accuracy is the share of pairs whose chosen answer gets the higher "
            "reward (KTO: of answers rewarded on the side of their label); ties, as before "
            "training where every reward is 0, count as misses.",
            "",
        ]
    return lines


def model_card(name: str, lineage: dict[str, Any], verdict: CommercialUse) -> str:
    """MODEL_CARD.md: the lineage in prose, with intended use and limitations."""
    base = lineage["base"]
    recipe = recipe_upgraded(lineage["recipe"])
    run = lineage["run"]
    data = lineage["data"]
    method = (
        f"LoRA (rank {recipe['lora_r']}, alpha {recipe['lora_alpha']}, on "
        f"{', '.join(recipe['lora_targets'])})"
        if recipe["adapter"] == "lora"
        else "full fine-tuning of every weight"
    )
    hw = run["hardware"]
    where = (
        f"{hw.get('gpu_count', 1)} x {hw['gpu']}"
        if hw["device"] == "cuda"
        else f"CPU ({hw['cpu']}, {hw['cpu_cores']} cores)"
    )
    preference = run.get("preference")
    tuned = "a preference-tuned" if preference else "an instruction-tuned"
    lines = [
        f"# {name}",
        "",
        f"`{name}` is {tuned} version of `{base['name']}` "
        f"({base['licence']['id']}), trained with cuvee by {method} on "
        f"{run['train_records']} records from {len(data)} data file(s) "
        f"({run['eval_records']} more held out for evaluation).",
        "",
        "## Commercial use",
        "",
        f"Commercial use: **{verdict.label}**.",
    ]
    lines += [f"- {r}" for r in verdict.reasons] or ["- every licence involved permits it"]
    lines += [
        "",
        "Check the full terms of each licence below before relying on this summary.",
        "",
        "## Base model",
        "",
        f"- name: `{base['name']}` (upstream: {base.get('upstream') or 'n/a'})",
        f"- weights sha256: `{base.get('weights_sha256') or 'n/a'}`",
        f"- licence: {base['licence']['id']} - {base['licence'].get('name', '')}",
        "",
        "## Training data",
        "",
        "| file | records | licence | sha256 | authors |",
        "|---|---|---|---|---|",
    ]
    for d in data:
        lines.append(
            f"| `{d['path']}` | {d['records']} | {d['licence']['id']} | `{d['sha256'][:16]}…` | "
            f"{', '.join(d['authors']) or '-'} |"
        )
    lines += [
        "",
        f"Trained on {run['train_records']} records; {run['eval_records']} held out for "
        "evaluation and never trained on.",
        "",
        "## Training run",
        "",
        f"- method: {method}; {run['steps']} optimizer steps, learning rate {recipe['lr']}, "
        f"sequence length {recipe['seq_len']}, batch {recipe['batch_size']} x "
        f"{recipe['grad_accum']} accumulation, packing {'on' if recipe['packing'] else 'off'}, "
        f"loss on {'all tokens' if recipe['train_on_prompt'] else 'assistant tokens only'}",
        f"- precision: {run['precision']}; seed {recipe['seed']}",
        f"- hardware: {where}",
        f"- wall time: {run['wall_time_s'] / 60:.1f} min; {run['tokens_seen']:,} tokens seen "
        f"({run['tokens_per_s']:.0f} tokens/s)",
        f"- estimated cost: ${run['estimated_cost_usd']:.2f} at "
        f"${run['price_per_hour']:.2f} per hour",
        f"- final training loss {_fmt_loss(run['train_loss'])}; held-out loss "
        f"{_fmt_loss(run['eval_loss'])} (base model: {_fmt_loss(run['base_eval_loss'])})",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in lineage["versions"].items()),
        "",
        "The full recipe is in `cuvee.json` under `lineage.recipe`; "
        "`cuvee train` with it repeats this run.",
        "",
    ]
    if preference:
        lines += preference_section(recipe, preference, data)
    lines += [
        "## Contributors",
        "",
    ]
    lines += [f"- {c}" for c in lineage["contributors"]] or ["- none declared"]
    lines += [
        "",
        "## Intended use",
        "",
        "Following instructions of the kind found in the training data, in the chat format of "
        f"the `{lineage['chat_template']}` template, which is stored with the model and applied "
        "by `cuvee run`, `cuvee serve` and exported runtimes.",
        "",
        "## Limitations",
        "",
        f"- A small model tuned on {run['train_records']} examples: it can state "
        "false things fluently. Do not use its answers unchecked for decisions that matter.",
        "- It knows only what its base learned and what the data shows; it has no access to "
        "current or private information unless given in the prompt.",
        "- Biases of the base model and of the data carry over; nothing here measured them.",
        "- The held-out loss measures fit to data like the training set, not general quality; "
        "run `cuvee eval` for task-level results.",
        "",
    ]
    return "\n".join(lines)
