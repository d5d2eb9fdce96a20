"""Training recipes: one validated description of a run, read from YAML and overridden by flags.

A recipe is the whole answer to "what exactly was trained": the resolved copy is written to the
run directory and into the model's lineage, so a run can be repeated from it alone."""

from __future__ import annotations

import re
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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

    base: str | None = None  # None: the default_base setting
    data: list[str] = Field(default_factory=list)
    name: str | None = None
    method: Literal["lora", "full"] = "lora"

    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, gt=0)
    time_budget: str | None = None

    lr: float = Field(2e-4, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)

    seq_len: int = Field(512, ge=16)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    packing: bool = True
    train_on_prompt: bool = False
    # Constrained variants added per training record (0: none): the instruction gains a
    # verifiable format rule (lowercase, N bullets, JSON, a postscript ...) and the answer is
    # rewritten to obey it, so the model learns to follow such rules (`cuvee data augment`).
    # Held-out records are never augmented.
    augment: int = Field(0, ge=0, le=4)

    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: list(ALL_LINEAR))
    # Train the embedding rows of the template's turn tokens too (LoRA only): a pretrained base
    # has barely seen them, and cannot learn to end its answers with a frozen end-of-turn row.
    train_turn_tokens: bool = True

    precision: Literal["auto", "bf16", "fp32"] = "auto"
    eval_split: float | str = "auto"
    eval_every: int = Field(50, ge=1)
    max_eval_records: int = Field(200, ge=1)
    save_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    seed: int = 42

    merge: bool = False
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=list)
    authors: list[str] = Field(default_factory=list)
    description: str = ""

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

    @property
    def time_budget_s(self) -> float | None:
        return parse_duration(self.time_budget)

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


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
    merged = {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        return Recipe(**merged)
    except ValidationError as exc:
        raise _describe(exc, where) from None
