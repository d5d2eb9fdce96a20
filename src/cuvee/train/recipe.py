"""Training recipes: one validated description of a run, read from YAML and overridden by flags.

A recipe is the whole answer to "what exactly was trained": the resolved copy is written to the
run directory and into the model's lineage, so a run can be repeated from it alone."""

from __future__ import annotations

import re
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cuvee.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

# The linear layers of a decoder block, by the names used in Llama, Gemma, Qwen and Mistral.
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def parse_duration(value: str | float | int | None) -> float | None:
    """Seconds in "90", "90s", "10m", "1.5h" or "1d"; None stays None."""
    if value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration like 90s, 10m or 2h")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


class Recipe(BaseModel):
    """Every knob of a training run. Unknown keys are errors, so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # The descriptions are the help of `cuvee train`'s flags, one per field (cli/train.py).
    base: str | None = Field(
        None, description="Stored base model to fine-tune [default: the default_base setting]."
    )
    data: list[str] = Field(
        default_factory=list,
        description="Training data file, in any format `cuvee data check` reads; `starter` is "
        "the bundled set.",
    )
    name: str | None = Field(None, description="Name of the fine-tuned model in the store.")
    # What is learned. Recipes written before preference tuning said `method: lora|full` for
    # what is now `adapter`; they are read as `method: sft` with that adapter (see _upgrade).
    method: Literal["sft", "dpo", "kto", "orpo"] = Field(
        "sft",
        description="Objective: sft (learn the answers), dpo (chosen over rejected pairs, "
        "against the parent), kto (answers labelled desirable or not), orpo (pairs, no "
        "reference). The old values lora and full mean sft with that --adapter.",
    )
    adapter: Literal["lora", "full"] = Field(
        "lora", description="LoRA adapters over a frozen base, or all weights."
    )

    epochs: float = Field(3.0, gt=0, description="Passes over the data.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    time_budget: str | None = Field(
        None, description="Stop and save after this long, e.g. 10m, 2h."
    )

    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    warmup_ratio: float = Field(
        0.03,
        ge=0,
        lt=1,
        description="Fraction of the steps with a linear warm-up (then cosine decay to zero).",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the gradient norm to this (null in a recipe: no clipping)."
    )

    seq_len: int = Field(512, ge=16, description="Tokens per row; longer records are truncated.")
    batch_size: int = Field(4, ge=1, description="Rows per micro-batch (per process).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    packing: bool = Field(
        True,
        description="Pack short records into rows of seq_len tokens (off: one record per row).",
    )
    train_on_prompt: bool = Field(
        False, description="Learn the prompt tokens too, not only the assistant's."
    )
    # Constrained variants added per training record (0: none): the instruction gains a
    # verifiable format rule (lowercase, N bullets, JSON, a postscript ...) and the answer is
    # rewritten to obey it, so the model learns to follow such rules (`cuvee data augment`).
    # Held-out records are never augmented.
    augment: int = Field(
        0,
        ge=0,
        le=4,
        description="Add N format-constrained variants of each training record (0 turns it "
        "off; held-out records never).",
    )

    # Preference tuning (method dpo, kto or orpo). The defaults are those of the papers.
    beta: float | None = Field(
        None,
        gt=0,
        description="Strength of the preference term; unset: 0.1 for dpo (sigmoid, ipo) and "
        "kto as in their papers, 2.0 for simpo (SimPO's range is 2-2.5).",
    )
    loss_type: Literal["sigmoid", "ipo", "simpo"] = Field(
        "sigmoid",
        description="DPO's loss: sigmoid (the DPO paper), ipo (squared, length-averaged "
        "log-ratios), simpo (length-averaged, no reference model).",
    )
    simpo_gamma: float = Field(
        1.0, ge=0, description="SimPO's target reward margin (the paper: gamma/beta about 0.5)."
    )
    nll_weight: float = Field(
        0.0,
        ge=0,
        description="DPO: add this times the chosen answer's per-token NLL to the loss (RPO; "
        "TRL's rpo_alpha, LLaMA-Factory's pref_ftx), keeping chosen answers likely.",
    )
    orpo_lambda: float = Field(
        0.1, gt=0, description="ORPO's weight of the odds-ratio term beside the NLL (paper: 0.1)."
    )
    kto_desirable_weight: float = Field(
        1.0,
        gt=0,
        description="KTO's weight of desirable examples (the paper keeps desirable x weight "
        "over undesirable x weight between 1 and 4/3).",
    )
    kto_undesirable_weight: float = Field(
        1.0, gt=0, description="KTO's weight of undesirable examples."
    )

    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(
        32, ge=1, description="LoRA scaling numerator (updates are scaled by alpha / r)."
    )
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_targets: list[str] = Field(
        default_factory=lambda: list(ALL_LINEAR),
        description="Module names LoRA adapts, or all-linear (every linear layer of a block).",
    )
    # Train the embedding rows of the template's turn tokens too (LoRA only): a pretrained base
    # has barely seen them, and cannot learn to end its answers with a frozen end-of-turn row.
    train_turn_tokens: bool = Field(
        True,
        description="Train the embedding rows of the template's turn tokens too (LoRA only).",
    )

    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 where the CPU or GPU has it natively, else fp32."
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Keep only each layer's input and compute its activations again in the "
        "backward pass: about a third more compute, a fraction of the memory.",
    )
    eval_split: float | str = Field(
        "auto",
        description="Held-out fraction (0.05), auto (the data's 'heldout' split if it has one, "
        "else 5%) or none.",
    )
    eval_every: int = Field(50, ge=1, description="Held-out loss every N steps.")
    max_eval_records: int = Field(200, ge=1, description="At most this many held-out records.")
    save_every: int = Field(100, ge=1, description="Checkpoint every N steps.")
    keep_checkpoints: int = Field(
        2, ge=1, description="Checkpoints kept in the run directory (the newest)."
    )
    seed: int = Field(42, description="Seed for data order, splits and initialisation.")

    merge: bool = Field(False, description="Also store merged full weights (LoRA).")
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="Also log metrics there (must be installed)."
    )
    authors: list[str] = Field(
        default_factory=list, description="Contributor named in the model card."
    )
    description: str = Field("", description="What the model is for, in its model card.")

    @model_validator(mode="before")
    @classmethod
    def _old_method(cls, data: Any) -> Any:
        return _upgrade(data) if isinstance(data, dict) else data

    @field_validator("time_budget")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        parse_duration(value)
        return value

    @field_validator("eval_split")
    @classmethod
    def _eval_split(cls, value: float | str) -> float | str:
        if isinstance(value, str):
            if value in ("auto", "none"):
                return value
            try:
                value = float(value)
            except ValueError:
                raise ValueError(
                    "use a fraction like 0.05, 'auto' (a 'heldout' split if the data has "
                    "one, else 5%) or 'none'"
                ) from None
        if not 0 <= value < 0.5:
            raise ValueError("the held-out fraction must be in [0, 0.5)")
        return value

    @field_validator("lora_targets")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        if value == ["all-linear"]:
            return list(ALL_LINEAR)
        if not value:
            raise ValueError("give at least one module name, or all-linear")
        return value

    @model_validator(mode="after")
    def _nll_for_dpo(self) -> Recipe:
        if self.nll_weight and self.method != "dpo":
            raise ValueError(
                f"nll_weight is DPO's (method {self.method}: orpo has its own NLL term, kto "
                "and sft none to add)"
            )
        return self

    @property
    def time_budget_s(self) -> float | None:
        return parse_duration(self.time_budget)

    @property
    def preference_beta(self) -> float:
        """beta as the loss uses it: the recipe's, or the standard value for its loss."""
        if self.beta is not None:
            return self.beta
        return 2.0 if (self.method == "dpo" and self.loss_type == "simpo") else 0.1

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# The values `method` had before it named the objective; still read (and taken as flags).
OLD_METHODS = ("lora", "full")


def _upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """A recipe mapping with the old ``method: lora|full`` read as ``method: sft`` and that
    ``adapter``; an ``adapter`` that says otherwise is an error."""
    old = raw.get("method")
    if old not in OLD_METHODS:
        return raw
    if raw.get("adapter") not in (None, old):
        raise ValueError(
            f"method: {old} (the old spelling of adapter: {old}) contradicts "
            f"adapter: {raw['adapter']}"
        )
    return {**raw, "method": "sft", "adapter": old}


def _describe(exc: ValidationError, where: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(recipe)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{key}: {msg}")
    return ConfigError(
        f"{where}: invalid recipe: " + "; ".join(lines),
        hint="see `cuvee train --help` or a shipped recipe (`cuvee train --list-recipes`)",
    )


def shipped_recipes() -> dict[str, Path]:
    """The recipes that come with cuvee, by name (file name without .yaml)."""
    root = files("cuvee.train") / "recipes"
    out: dict[str, Path] = {}
    for entry in root.iterdir():
        if entry.name.endswith(".yaml"):
            with as_file(entry) as real:
                out[entry.name[: -len(".yaml")]] = Path(real)
    return dict(sorted(out.items()))


def read_recipe_file(spec: str | Path) -> tuple[dict[str, Any], str]:
    """The raw mapping of a recipe given as a path or a shipped recipe's name."""
    import yaml

    path = Path(spec)
    if not path.is_file():
        shipped = shipped_recipes()
        if str(spec) in shipped:
            path = shipped[str(spec)]
        else:
            raise ConfigError(
                f"recipe {str(spec)!r} is neither a file nor a shipped recipe",
                hint=f"shipped recipes: {', '.join(shipped)}",
            )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of knob: value")
    return raw, str(path)


def build_recipe(spec: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Recipe:
    """A recipe from a file (or a shipped name) with flag overrides on top; None flags are unset."""
    raw: dict[str, Any] = {}
    where = "flags"
    if spec is not None:
        raw, where = read_recipe_file(spec)
    set_flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        # Each side upgraded on its own: an old recipe's `method: full` stays its adapter when
        # a flag asks for `--method dpo`.
        merged = {**_upgrade(raw), **_upgrade(set_flags)}
        return Recipe(**merged)
    except ValidationError as exc:
        raise _describe(exc, where) from None
    except ValueError as exc:
        raise ConfigError(f"{where}: invalid recipe: {exc}") from None
