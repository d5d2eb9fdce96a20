"""Does the starter recipe help? Base gemma3-270m against its fine-tune on the bundled starter
set, trained under a CPU time budget (30 minutes by default).

Measured in one run:

- the tuning cost: wall time, optimizer steps, tokens/s and the estimated cost the run summary
  reports, and the held-out loss of base and fine-tune on the starter set's held-out records
  (computed by `cuvee train` itself);
- `cuvee eval` of both models, greedy, on the `instructions` suite (IFEval-style, all of its
  prompts) and on the starter set's held-out slice (records labelled ``split: heldout``, never
  trained on), scored by ROUGE-L against the reference answer.

The fine-tune "beats the base on every metric" when each metric is higher (loss lower).

    python bench/quality.py [--time-budget 30m] [--quick] [--name quality-30m] [--reuse]

`--reuse` evaluates an existing fine-tune of that name instead of training again. The last line
printed is one JSON object with the figures."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

from machine import describe

from cuvee.cli import main as cuvee
from cuvee.config import load_settings
from cuvee.data.starter import HELDOUT_SUITE, write_heldout_suite
from cuvee.quickstart import STARTER_RECIPE
from cuvee.store import ModelStore


def run_cuvee(*args: str) -> str:
    """Run a cuvee command in-process; its stdout (progress stays on stderr)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            cuvee(list(args))
        except SystemExit as exc:
            if exc.code:
                raise RuntimeError(f"cuvee {' '.join(args)} exited {exc.code}") from exc
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time-budget", default="30m")
    parser.add_argument("--base", default="gemma3-270m")
    parser.add_argument("--name", default=None, help="Fine-tune name [quality-BUDGET].")
    parser.add_argument("--quick", action="store_true", help="3-minute budget, 10 items a suite")
    parser.add_argument("--reuse", action="store_true", help="Evaluate an existing fine-tune.")
    args = parser.parse_args()
    machine = describe()
    budget = "3m" if args.quick else args.time_budget
    name = args.name or f"quality-{budget}"
    limit = ["--limit", "10"] if args.quick else []
    store = ModelStore(load_settings().models_dir)

    if not store.exists(args.base):
        run_cuvee("models", "pull", args.base)
    if args.reuse and store.exists(name):
        print(f"reusing {name}", flush=True)
        wall = None
    else:
        started = time.perf_counter()
        run_cuvee(
            "train",
            STARTER_RECIPE,
            "--base",
            args.base,
            "--name",
            name,
            "--time-budget",
            budget,
            "--force",
            "--json",
        )
        wall = round(time.perf_counter() - started, 1)
    # the run summary of the stored fine-tune (so --reuse reports the same figures)
    run_dir = Path(store.get(name).manifest.source.path or "")
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    training = {
        "time_budget": budget if wall is not None else summary.get("time_budget"),
        "wall_s": wall if wall is not None else round(summary["wall_time_s"], 1),
        "steps": summary["steps"],
        "tokens_per_s": round(summary["tokens_per_s"], 1),
        "estimated_cost_usd": summary["estimated_cost_usd"],
        "heldout_loss_base": summary["base_eval_loss"],
        "heldout_loss_tuned": summary["eval_loss"],
    }
    print(f"training: {json.dumps(training)}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        suite_file = Path(tmp) / HELDOUT_SUITE
        items = write_heldout_suite(suite_file)
        print(f"held-out slice: {items} records", flush=True)
        started = time.perf_counter()
        out = run_cuvee(
            "eval",
            args.base,
            name,
            "--suite",
            "instructions",
            "--suite",
            f"tasks={suite_file}",
            *limit,
            "--json",
        )
        eval_s = time.perf_counter() - started
    document = json.loads(out.strip().splitlines()[-1])

    rows = []
    heldout = f"tasks:{HELDOUT_SUITE}"
    for suite, metrics in (("instructions", None), (heldout, ["summary_rouge_l"])):
        base = document["results"][args.base][suite]["metrics"]
        tuned = document["results"][name][suite]["metrics"]
        for metric in metrics or list(base):
            if metric in base and metric in tuned:
                label = "heldout" if suite == heldout else suite
                rows.append((f"{label}.{metric}", base[metric], tuned[metric], True))
    if training:
        rows.append(
            ("heldout.loss", training["heldout_loss_base"], training["heldout_loss_tuned"], False)
        )
    print(f"\n{'metric':<34} {'base':>8} {'tuned':>8}")
    wins = []
    for metric, base, tuned, higher_is_better in rows:
        better = tuned > base if higher_is_better else tuned < base
        wins.append(better)
        print(f"{metric:<34} {base:>8.3f} {tuned:>8.3f}  {'better' if better else 'NOT better'}")
    result = {
        "base": args.base,
        "tuned": name,
        "training": training,
        "eval_seconds": round(eval_s, 1),
        "metrics": {m: {"base": b, "tuned": t} for m, b, t, _ in rows},
        "tuned_beats_base_on_every_metric": all(wins),
        "machine": machine,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
