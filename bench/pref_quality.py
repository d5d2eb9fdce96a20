"""Does preference tuning pay for its time? SFT for T, then pairs and DPO for another T, against
SFT for 2T alone, per seed, on IFEval-style prompts that no pair and no tuning decision came from.

Arms, for each seed (every run a plain `cuvee` command, so this is what a user would type):

- ``sft1``: `cuvee train starter-lora-cpu` for ``--sft-steps`` optimizer steps;
- ``sft2``: the same recipe and seed for twice as many steps (the baseline: SFT for 2T);
- ``dpo``:  `cuvee data pairs` samples ``-k`` answers from ``sft1`` for ``--pair-prompts``
  prompts (format-constrained variants of the starter set's training records, made by
  `cuvee data augment`), plus `--from-augment` pairs of the same prompts (no model), then
  `cuvee train starter-dpo-cpu --base sft1` for ``--dpo-steps`` steps.

Arms are sized in steps, not minutes, so that another job on the machine changes only how long
they take, not what they learn; the defaults are what 10 minutes give on a quiet 2-core EPYC
(the issue's 30-minute scale: ``--sft-steps 180 --pair-prompts 360 --dpo-steps 40``). Each arm's
wall time is printed beside its figures.

The evaluation prompts: each instruction of ``--eval-source`` (Alpaca's 175 seed tasks by
default, read from ../shared/data, never copied into the repository) with two constraints
added by `cuvee data augment`, split by the source record into a ``dev`` half and a ``heldout``
half; the bundled ``instructions`` suite is reported too. Greedy decoding, the suite's token
limit. Answer length is the mean number of words of the answers on each half.

    python bench/pref_quality.py --seeds 1 2 [--sft-steps 60] [--dpo-steps 12] [--reuse]
        [--max-length-ratio 1.1] [--nll-weight 1.0] [--with-reference -k 2 --no-augment-pairs]

``--max-length-ratio`` drops pairs whose chosen answer is much longer than the rejected one and
``--nll-weight`` adds the chosen answers' NLL to the DPO loss (RPO); both were chosen on the
``dev`` half (session 14: 1.1 and 1.0), so only the ``heldout`` half judges them.
``--with-reference`` lets each prompt record's own answer compete with the model's samples (it
wins most pairs: self-play fine-tuning, SPIN; session 21, dev half).

The last line printed is one JSON object: per seed and arm the four IFEval metrics on each
half, the answer lengths, steps, pairs and wall times; ``dpo_beats_sft2`` per seed (prompt
strict on the held-out half), ``dpo_vs_sft2_heldout`` (the prompts only one of the two passed,
and the exact McNemar p-value: at 176 prompts a few points either way is within chance) and
``length_ratio`` (dpo answers over sft2's, held-out half)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from machine import describe

from cuvee.config import load_settings
from cuvee.eval.cache import GenerationCache

CUVEE = str(Path(sys.executable).parent / "cuvee")
HERE = Path(__file__).resolve().parent


def cuvee(*args: str, log: Path) -> str:
    """Run one cuvee command; its stdout. Progress and errors go to ``log``."""
    started = time.perf_counter()
    with log.open("a") as err:
        err.write(f"\n$ cuvee {' '.join(args)}\n")
        err.flush()
        done = subprocess.run([CUVEE, *args], stdout=subprocess.PIPE, stderr=err, text=True)
    if done.returncode:
        raise SystemExit(f"cuvee {' '.join(args)} exited {done.returncode}; see {log}")
    what = " ".join(args[:2]) + (f" ({args[3]})" if len(args) > 3 else "")
    print(f"  cuvee {what}: {time.perf_counter() - started:.0f} s", flush=True)
    return done.stdout


def last_json(text: str) -> dict:
    """The JSON a ``--json`` command printed: the whole output, or its last line."""
    try:
        return json.loads(text)
    except ValueError:
        return json.loads(text.strip().splitlines()[-1])


def source_tasks(source: Path) -> list[tuple[str, str]]:
    """(instruction, answer) of each record of ``source``: Alpaca's seed tasks (JSONL, the
    first instance of each) or an Alpaca-format JSON array (instruction, input, output)."""
    if source.suffix == ".json":
        rows = [
            (r["instruction"], r.get("input") or "", r["output"])
            for r in json.loads(source.read_text())
        ]
    else:
        rows = []
        for line in source.read_text().splitlines():
            task = json.loads(line)
            first = task["instances"][0]
            rows.append((task["instruction"], first["input"], first["output"]))
    return [(text + (f"\n\n{given}" if given else ""), answer) for text, given, answer in rows]


def write_eval_halves(source: Path, per_record: int, work: Path, log: Path) -> dict[str, Path]:
    """The source tasks as chat records, ``per_record`` constrained variants each, as IFEval
    suite files split by source record: even records in ``dev``, odd in ``heldout``."""
    chats = work / "eval-source.jsonl"
    with chats.open("w") as out:
        for user, answer in source_tasks(source):
            messages = [
                {"role": "user", "content": user},
                {"role": "assistant", "content": answer},
            ]
            out.write(json.dumps({"messages": messages}) + "\n")
    sidecar = source.with_name(source.name + ".cuvee.yaml")
    if sidecar.exists():
        chats.with_name(chats.name + ".cuvee.yaml").write_text(sidecar.read_text())
    variants = work / "eval-variants.jsonl"
    cuvee(
        "data",
        "augment",
        str(chats),
        "-o",
        str(variants),
        "--per-record",
        str(per_record),
        "--no-originals",
        "--seed",
        "7",
        log=log,
    )
    halves = {"dev": work / "eval-dev.jsonl", "heldout": work / "eval-heldout.jsonl"}
    files = {name: path.open("w") for name, path in halves.items()}
    for n, line in enumerate(variants.read_text().splitlines()):
        record = json.loads(line)
        constraint = record["metadata"]["constraint"]
        origin = int(record["metadata"]["augmented_from"].rsplit(":", 1)[1])
        row = {
            "key": n,
            "prompt": record["messages"][0]["content"],
            "instruction_id_list": [constraint["id"]],
            "kwargs": [constraint["kwargs"]],
        }
        files["dev" if origin % 2 == 0 else "heldout"].write(json.dumps(row) + "\n")
    for fh in files.values():
        fh.close()
    return halves


def answers_of(model: dict, suite: dict) -> list[str]:
    """The evaluation's answers, read back from cuvee's generation cache."""
    root = GenerationCache(load_settings().home).root
    for path in sorted(root.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        data = json.loads(path.read_text())
        if data.get("model") == model and data["suite"].get("sha256") == suite["sha256"]:
            return data["outputs"]
    raise SystemExit(f"no cached answers for {model.get('file')} on {suite.get('file')}")


def kept_or_resumed(name: str, info: dict, log: Path) -> bool:
    """Whether ``name`` is in the store already, or a killed bench left its newest run
    unfinished with a checkpoint and it was continued now (its recipe, steps and seed are in
    the run's directory)."""
    settings = load_settings()
    if (settings.models_dir / name).exists():
        return True
    runs = settings.runs_dir
    unfinished = [
        run
        for run in sorted(runs.glob(f"{name}-*"))
        if not (run / "summary.json").exists() and any((run / "checkpoints").glob("step-*"))
    ]
    if not unfinished:
        return False
    started = time.perf_counter()
    cuvee("train", "--resume", str(unfinished[-1]), "--force", log=log)
    info.update(resumed=unfinished[-1].name, wall_s=round(time.perf_counter() - started, 1))
    return True


def train_arms(seed: int, args: argparse.Namespace, work: Path, log: Path) -> dict:
    names = {arm: f"{args.prefix}-s{seed}-{arm}" for arm in ("sft1", "sft2", "dpo")}
    info: dict[str, dict] = {arm: {} for arm in names}
    for arm, steps in (("sft1", args.sft_steps), ("sft2", 2 * args.sft_steps)):
        if not (args.reuse and kept_or_resumed(names[arm], info[arm], log)):
            started = time.perf_counter()
            cuvee(
                "train",
                "starter-lora-cpu",
                "--name",
                names[arm],
                "--seed",
                str(seed),
                "--max-steps",
                str(steps),
                "--time-budget",
                "24h",
                "--force",
                log=log,
            )
            info[arm]["wall_s"] = round(time.perf_counter() - started, 1)
        info[arm]["steps"] = steps
    pairs = work / f"pairs-s{seed}.jsonl"
    prompts = work / f"pair-prompts-s{seed}.jsonl"
    augmented = work / f"augment-pairs-s{seed}.jsonl"
    if not (args.reuse and kept_or_resumed(names["dpo"], info["dpo"], log)):
        started = time.perf_counter()
        starter = work / "starter-train.jsonl"
        if not starter.exists():
            from cuvee.data.starter import starter_files

            lines = [
                ln
                for p in starter_files()
                for ln in p.read_text().splitlines()
                if ln.strip() and '"heldout"' not in ln
            ]
            starter.write_text("\n".join(lines) + "\n")
            starter.with_name(starter.name + ".cuvee.yaml").write_text("licence: Apache-2.0\n")
        # pairs a killed run already built from the same stored sft1 are kept with --reuse
        # (sampling is seeded, so building them again gives the same file); the sidecar is
        # written after the rows, so it marks a finished file
        built = [pairs, *([augmented] if args.augment_pairs else [])]
        kept = args.reuse and all(p.with_name(p.name + ".cuvee.yaml").exists() for p in built)
        if not kept:
            cuvee(
                "data",
                "augment",
                str(starter),
                "-o",
                str(prompts),
                "--no-originals",
                "--seed",
                str(100 + seed),
                log=log,
            )
            summary = last_json(
                cuvee(
                    "data",
                    "pairs",
                    "--model",
                    names["sft1"],
                    "--data",
                    str(prompts),
                    "-k",
                    str(args.samples),
                    "--limit",
                    str(args.pair_prompts),
                    "--seed",
                    str(seed),
                    "--max-length-ratio",
                    str(args.max_length_ratio),
                    *(["--with-reference"] if args.with_reference else []),
                    "-o",
                    str(pairs),
                    "--json",
                    log=log,
                )
            )
            info["dpo"]["pairs_s"] = round(time.perf_counter() - started, 1)
        info["dpo"]["model_pairs"] = len(pairs.read_text().splitlines())
        data = ["--data", str(pairs)]
        if kept and args.augment_pairs:
            info["dpo"]["augment_pairs"] = len(augmented.read_text().splitlines())
            data += ["--data", str(augmented)]
        elif args.augment_pairs:
            summary = last_json(
                cuvee(
                    "data",
                    "pairs",
                    "--from-augment",
                    "--data",
                    str(prompts),
                    "--max-length-ratio",
                    str(args.max_length_ratio),
                    "-o",
                    str(augmented),
                    "--json",
                    log=log,
                )
            )
            info["dpo"]["augment_pairs"] = summary["pairs"]
            data += ["--data", str(augmented)]
        trained = time.perf_counter()
        cuvee(
            "train",
            "starter-dpo-cpu",
            "--base",
            names["sft1"],
            *data,
            "--name",
            names["dpo"],
            "--seed",
            str(seed),
            "--max-steps",
            str(args.dpo_steps),
            "--save-every",
            "3",
            "--epochs",
            "10",
            *(["--nll-weight", str(args.nll_weight)] if args.nll_weight is not None else []),
            "--time-budget",
            "24h",
            "--force",
            log=log,
        )
        info["dpo"]["train_s"] = round(time.perf_counter() - trained, 1)
        info["dpo"]["wall_s"] = round(time.perf_counter() - started, 1)
    info["dpo"]["steps"] = args.dpo_steps
    return {"names": names, "arms": info}


def evaluate(names: dict[str, str], halves: dict[str, Path], limit: int | None, log: Path) -> dict:
    """Per arm and half: the IFEval metrics, answer lengths and which prompts passed strictly."""
    from cuvee.eval.instructions import SUITE

    suites = [f"instructions={p}" for p in halves.values()] + ["instructions"]
    flags = [x for s in suites for x in ("--suite", s)]
    flags += ["--limit", str(limit)] if limit else []
    report = last_json(cuvee("eval", *names.values(), *flags, "--json", log=log))
    figures: dict[str, dict] = {}
    for arm, name in names.items():
        figures[arm] = {}
        for label, suite in report["suites"].items():
            half = next((h for h, p in halves.items() if label.endswith(p.name)), "bundled")
            metrics = report["results"][name][label]["metrics"]
            outputs = answers_of(report["models"][name], suite)
            items = SUITE.load(halves.get(half))[: len(outputs)]
            words = sum(len(o.split()) for o in outputs) / max(len(outputs), 1)
            figures[arm][half] = {
                **{k: round(v, 4) for k, v in metrics.items()},
                "items": len(outputs),
                "mean_words": round(words, 1),
                "over_200_words": sum(len(o.split()) > 200 for o in outputs),
                "passed": [all(d["strict"]) for d in SUITE.score(items, outputs).items],
            }
    return figures


def paired(a: list[bool], b: list[bool]) -> dict:
    """Prompts only ``a`` passed, only ``b`` passed, and the exact two-sided McNemar p-value of
    the difference (a binomial test on those prompts): how far apart two arms really are on
    the same prompts, which the two accuracies alone do not say."""
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n if n else 0.5
    return {"only_a": only_a, "only_b": only_b, "p": round(min(1.0, 2 * tail), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sft-steps", type=int, default=60, help="sft1's steps; sft2 twice")
    parser.add_argument("--pair-prompts", type=int, default=120)
    parser.add_argument("-k", "--samples", type=int, default=4)
    parser.add_argument("--dpo-steps", type=int, default=12)
    parser.add_argument("--no-augment-pairs", dest="augment_pairs", action="store_false")
    parser.add_argument(
        "--with-reference",
        action="store_true",
        help="`cuvee data pairs --with-reference`: the data's answer is a candidate (SPIN)",
    )
    parser.add_argument(
        "--max-length-ratio",
        type=float,
        default=0,
        help="`cuvee data pairs --max-length-ratio` for both kinds of pairs (0: keep all)",
    )
    parser.add_argument(
        "--nll-weight", type=float, help="the DPO run's nll_weight (default: the recipe's)"
    )
    parser.add_argument(
        "--eval-source",
        type=Path,
        default=HERE.parent.parent / "shared/data/alpaca_seed_tasks.jsonl",
        help="Alpaca's seed tasks (JSONL) or an Alpaca-format JSON array, e.g. "
        "../shared/data/alpaca_en_demo.json (999 records: more power; use another --work)",
    )
    parser.add_argument(
        "--eval-per-record", type=int, default=2, help="constrained variants per source record"
    )
    parser.add_argument("--eval-limit", type=int, help="first N prompts of each suite (smoke)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cuvee-pref-quality"))
    parser.add_argument("--prefix", default="pq")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep arms already in the store and pairs already built in --work (same settings)",
    )
    args = parser.parse_args()
    machine = describe()
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "log.txt"
    print(f"machine: {json.dumps(machine)}\nlog: {log}", flush=True)
    halves = write_eval_halves(args.eval_source, args.eval_per_record, args.work, log)
    seeds = {}
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        run = train_arms(seed, args, args.work, log)
        run["eval"] = evaluate(run["names"], halves, args.eval_limit, log)
        held = {arm: run["eval"][arm]["heldout"] for arm in run["names"]}
        run["dpo_beats_sft2"] = held["dpo"]["prompt_strict"] > held["sft2"]["prompt_strict"]
        run["dpo_vs_sft2_heldout"] = paired(held["dpo"]["passed"], held["sft2"]["passed"])
        run["length_ratio"] = round(held["dpo"]["mean_words"] / held["sft2"]["mean_words"], 3)
        for arm in run["names"]:
            row = run["eval"][arm]
            print(
                f"  {arm:5s} "
                + "  ".join(
                    f"{half} strict {row[half]['prompt_strict']:.3f} loose "
                    f"{row[half]['prompt_loose']:.3f} words {row[half]['mean_words']:.0f}"
                    for half in row
                )
                + f"  {run['arms'][arm]}",
                flush=True,
            )
        pair = run["dpo_vs_sft2_heldout"]
        print(
            f"  heldout, same prompts: dpo alone passed {pair['only_a']}, sft2 alone "
            f"{pair['only_b']} (exact McNemar p {pair['p']:.3f})",
            flush=True,
        )
        seeds[seed] = run
    print(
        json.dumps(
            {
                "bench": "pref_quality",
                "machine": machine,
                "settings": {k: str(v) for k, v in vars(args).items()},
                "seeds": seeds,
                "dpo_beats_sft2_all_seeds": all(r["dpo_beats_sft2"] for r in seeds.values()),
                "max_length_ratio": max(r["length_ratio"] for r in seeds.values()),
            }
        )
    )


if __name__ == "__main__":
    main()
