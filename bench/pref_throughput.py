"""Preference-tuning throughput: cuvee's DPO step against an SFT step on the same pairs, and
against the plain way of computing DPO (each answer in its own row after its prompt, full-vocab
logits at every position, the reference model run again every step, as TRL's DPOTrainer does by
default), written here with the same model, LoRA and bf16 autocast (--precision fp32: fp32 on
every side, for a CPU without native bf16); and with --trl-python, TRL's DPOTrainer itself, run
by the interpreter of a throw-away venv (TRL is not a dependency of cuvee).
TRL's DPOConfig turns gradient checkpointing on by default; --gradient-checkpointing does the same
for cuvee's sides (the recipe knob), so that memory compares like with like.

Same model (gemma3-270m from the store, or --base), pairs (a preference file, read here only),
chat template, sequence length, LoRA (r=16, alpha=32, all linear layers) and pairs per step on
each side. Each side runs in its own process (peak RSS is its own), warm-up steps first; the
sides take turns for --repeat rounds so a busy machine slows them alike.

    python bench/pref_throughput.py --data ../shared/data/dpo_en_demo.json [--quick]

The last line printed is one JSON object: ``dpo_step_s``, ``sft_step_s``, ``naive_step_s``,
``dpo_over_sft_step``, ``ratio_vs_naive`` (tokens/s), ``peak_rss_ratio_vs_naive`` and
``reference_s`` (cuvee's one-off reference pass over the pairs measured); with TRL also
``ratio_vs_trl`` (tokens/s) and ``peak_rss_ratio_vs_trl``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDES = ("dpo", "sft", "naive")

# TRL's DPOTrainer + peft, run with --trl-python (a throw-away virtual environment holding trl,
# peft and the same torch and transformers): the same model directory, pairs (as the texts cuvee
# tokenized, prompt rendered by the chat template), LoRA, sequence length and pairs per step, in
# bf16 (fp32 with --precision fp32) with the reference log-probs precomputed (its fastest plain
# configuration on a CPU), and the pairs in order. Prints one JSON object as a side does.
TRL_SIDE = r"""
import json, resource, statistics, sys, time
import torch
from datasets import Dataset
from peft import LoraConfig
from torch.utils.data import SequentialSampler
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

spec = json.loads(sys.argv[1])
pairs = [json.loads(line) for line in open(spec["pairs"])]
tokenizer = AutoTokenizer.from_pretrained(spec["model"])
model = AutoModelForCausalLM.from_pretrained(
    spec["model"], dtype=torch.bfloat16 if spec["bf16"] else torch.float32)
steps = spec["warmup"] + spec["steps"]

class InOrder(DPOTrainer):
    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)

marks = []
class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        marks.append([time.perf_counter(), None])
    def on_step_end(self, args, state, control, **kw):
        marks[-1][1] = time.perf_counter()

config = DPOConfig(
    output_dir=spec["out"], per_device_train_batch_size=spec["pairs_per_step"],
    gradient_accumulation_steps=1, max_steps=steps, learning_rate=1e-5, beta=0.1,
    loss_type="sigmoid", max_length=spec["seq_len"], bf16=spec["bf16"], use_cpu=True,
    precompute_ref_log_probs=True, gradient_checkpointing=spec["checkpointing"],
    logging_steps=1, report_to=[], save_strategy="no",
    dataloader_num_workers=0, seed=0, lr_scheduler_type="constant", warmup_steps=0,
)
lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                  task_type="CAUSAL_LM")
started = time.perf_counter()
trainer = InOrder(model=model, args=config, train_dataset=Dataset.from_list(pairs),
                  processing_class=tokenizer, peft_config=lora, callbacks=[Clock()])
trainer.train()
times = [end - begin for begin, end in marks[spec["warmup"]:]]
measured = pairs[spec["warmup"] * spec["pairs_per_step"]: steps * spec["pairs_per_step"]]
tokens = sum(p["tokens"] for p in measured)
print(json.dumps({
    "side": "trl", "step_s": statistics.median(times), "tokens_per_s": tokens / sum(times),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "reference_s": None, "pairs_measured": len(measured),
    "first_loss": trainer.state.log_history[0].get("loss"),
}))
"""


def _export_pairs(args: argparse.Namespace, path: Path) -> str:
    """The pairs the cuvee sides train on, in their order, as texts for TRL (the prompt as the
    chat template renders it, each answer as the tokens cuvee gives it, decoded), with cuvee's
    token count of each pair; returns the base model's directory."""
    from cuvee.config import load_settings
    from cuvee.store import ModelStore
    from cuvee.tokenizer import load_tokenizer, special_tokens
    from cuvee.train.pairs import prepare_preferences
    from cuvee.train.recipe import Recipe

    recipe = Recipe(base=args.base, method="dpo", data=[args.data], name="bench",
                    seq_len=args.seq_len, batch_size=args.pairs, eval_split="none",
                    packing=False)  # fmt: skip
    store = ModelStore(load_settings().models_dir)
    prepared = prepare_preferences(store, recipe)
    model_dir = store.get(args.base).path
    tokenizer = load_tokenizer(model_dir)
    bos = tokenizer.token_to_id(special_tokens(model_dir)[0] or "<bos>")
    rows = prepared.train_rows[: (args.warmup + args.steps) * args.pairs]
    with path.open("w") as out:
        for row in rows:
            (unit,) = row.units
            ids = list(unit.prompt)
            if ids and ids[0] == bos:
                ids = ids[1:]  # TRL's tokenizer call adds the BOS itself
            prompt = tokenizer.decode(ids, skip_special_tokens=False)
            record = {
                "prompt": prompt,
                "chosen": tokenizer.decode(list(unit.first), skip_special_tokens=False),
                "rejected": tokenizer.decode(list(unit.second), skip_special_tokens=False),
                "tokens": row.real_tokens,
            }
            out.write(json.dumps(record) + "\n")
    return str(model_dir)


def _side(args: argparse.Namespace) -> dict:
    """One side's steps in this process: seconds per step after warm-up, tokens, peak RSS."""
    import torch

    from cuvee.config import load_settings
    from cuvee.store import ModelStore
    from cuvee.train.loss import Workspace
    from cuvee.train.pairs import answer_batch, prepare_preferences
    from cuvee.train.preference import PreferenceLoss, reference_logprobs, with_reference
    from cuvee.train.recipe import Recipe
    from cuvee.train.surgery import build_model, causal_lm
    from cuvee.train.throughput import peak_memory_mb

    recipe = Recipe(
        base=args.base,
        method="dpo",
        data=[args.data],
        name="bench",
        seq_len=args.seq_len,
        batch_size=args.pairs,
        eval_split="none",
        packing=False,
        lora_dropout=0.0,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    store = ModelStore(load_settings().models_dir)
    prepared = prepare_preferences(store, recipe)
    steps = args.warmup + args.steps
    rows = prepared.train_rows[: steps * args.pairs]
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = build_model(store, prepared, args.precision, torch.device("cpu"))
    module = PreferenceLoss(model, dtype, recipe)
    module.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)

    def autocast():
        if args.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=torch.bfloat16)

    reference_s = None
    if args.side == "dpo":
        started = time.perf_counter()
        rows = with_reference(rows, reference_logprobs(module, rows, args.pairs, "cpu", autocast))
        reference_s = time.perf_counter() - started
    lm = causal_lm(model)
    workspace = Workspace()

    def sft_loss(batch_rows) -> torch.Tensor:
        """Cross-entropy of both answers, each after its prompt in its own row (head at answer
        tokens only, as cuvee's SFT does)."""
        from cuvee.train.loss import linear_cross_entropy
        from cuvee.train.surgery import head_weights

        seqs = [
            (u.prompt + a, len(u.prompt))
            for r in batch_rows
            for u in r.units
            for a in (u.first, u.second)
        ]
        width = max(len(s) for s, _ in seqs)
        ids = torch.tensor([s + (0,) * (width - len(s)) for s, _ in seqs])
        hidden = lm.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
        rows_at, targets = [], []
        for b, (s, p) in enumerate(seqs):
            for j in range(p, len(s)):
                rows_at.append(b * width + j - 1)
                targets.append(s[j])
        h = hidden.reshape(-1, hidden.shape[-1])[torch.tensor(rows_at)]
        weight, index, values = head_weights(lm.get_output_embeddings())
        return linear_cross_entropy(
            h,
            weight,
            torch.tensor(targets),
            softcap=module.softcap,
            compute_dtype=dtype,
            row_index=index,
            row_values=values,
            workspace=workspace,
        ) / len(targets)

    def naive_loss(batch_rows) -> torch.Tensor:
        """DPO the plain way: chosen and rejected each in a row after the prompt, full logits
        and log_softmax everywhere, the reference (adapter disabled) run again each step."""
        seqs = [
            (u.prompt + a, len(u.prompt))
            for r in batch_rows
            for u in r.units
            for a in (u.first, u.second)
        ]
        width = max(len(s) for s, _ in seqs)
        ids = torch.tensor([s + (0,) * (width - len(s)) for s, _ in seqs])
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        for b, (s, p) in enumerate(seqs):
            mask[b, p : len(s)] = True

        def logps(m) -> torch.Tensor:
            logits = m(input_ids=ids, use_cache=False).logits[:, :-1].float()
            picked = torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None]).squeeze(2)
            return (picked * mask[:, 1:]).sum(1)

        policy = logps(model).view(-1, 2)
        with torch.no_grad(), model.disable_adapter():
            ref = logps(model).view(-1, 2)
        ratio = policy - ref
        return -torch.nn.functional.logsigmoid(0.1 * (ratio[:, 0] - ratio[:, 1])).mean()

    times, tokens = [], []
    for step in range(steps):
        batch_rows = rows[step * args.pairs : (step + 1) * args.pairs]
        started = time.perf_counter()
        with autocast():
            if args.side == "dpo":
                loss_sum, _ = module(**answer_batch(batch_rows, torch.device("cpu")))
                loss = loss_sum / len(batch_rows)
            elif args.side == "sft":
                loss = sft_loss(batch_rows)
            else:
                loss = naive_loss(batch_rows)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
            # the pairs' own tokens: prompt once and both answers, the same count every side
            tokens.append(sum(r.real_tokens for r in batch_rows))
    return {
        "side": args.side,
        "step_s": statistics.median(times),
        "tokens_per_s": sum(tokens) / sum(times),
        "peak_rss_mb": peak_memory_mb("cpu"),
        "reference_s": reference_s,
        "pairs_measured": len(times) * args.pairs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a preference file (pairs)")
    parser.add_argument("--base", default="gemma3-270m")
    parser.add_argument("--seq-len", type=int, default=384)
    parser.add_argument("--pairs", type=int, default=2, help="pairs per step")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 steps, 1 round")
    parser.add_argument(
        "--trl-python",
        default=None,
        help="python of a throw-away venv with trl and peft: adds TRL's DPOTrainer as a side",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="cuvee's sides recompute activations in the backward pass (the recipe knob)",
    )
    parser.add_argument(
        "--trl-no-checkpointing",
        action="store_true",
        help="TRL without gradient checkpointing (its DPOConfig turns it on by default)",
    )
    parser.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default="bf16",
        help="every side's (TRL's too); fp32 where the CPU has no native bf16 (cuvee doctor "
        "says), as cuvee trains there",
    )
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(_side(args)))
        return
    if args.quick:
        args.steps, args.repeat = 2, 1
    from machine import describe

    machine = describe()
    sides = SIDES + (("trl",) if args.trl_python else ())
    results: dict[str, list[dict]] = {s: [] for s in sides}
    env = {**os.environ, "CUVEE_TRAIN_COMPILE": "off"}  # the same plain kernels on each side
    work = Path(tempfile.mkdtemp(prefix="pref-bench-"))
    trl_spec = None
    if args.trl_python:
        model_dir = _export_pairs(args, work / "pairs.jsonl")
        trl_spec = json.dumps(
            {"pairs": str(work / "pairs.jsonl"), "model": model_dir, "out": str(work / "trl"),
             "warmup": args.warmup, "steps": args.steps, "pairs_per_step": args.pairs,
             "seq_len": args.seq_len, "checkpointing": not args.trl_no_checkpointing,
             "bf16": args.precision == "bf16"}
        )  # fmt: skip
        (work / "trl_side.py").write_text(TRL_SIDE)
    for _ in range(args.repeat):
        for side in sides:
            cmd = [sys.executable, __file__, "--side", side, "--data", args.data]
            cmd += ["--base", args.base, "--seq-len", str(args.seq_len), "--pairs", str(args.pairs)]
            cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            cmd += ["--precision", args.precision]
            cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
            if side == "trl":
                cmd = [args.trl_python, str(work / "trl_side.py"), trl_spec]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if out.returncode != 0:
                sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results[side].append(result)
            print(
                f"{side:>6}: {result['step_s']:.2f} s/step, {result['tokens_per_s']:.0f} tok/s, "
                f"peak RSS {result['peak_rss_mb']:.0f} MB"
            )

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    summary = {
        "machine": machine,
        "data": str(Path(args.data)),
        "base": args.base,
        "seq_len": args.seq_len,
        "pairs_per_step": args.pairs,
        "precision": args.precision,
        "dpo_step_s": median("dpo", "step_s"),
        "sft_step_s": median("sft", "step_s"),
        "naive_step_s": median("naive", "step_s"),
        "dpo_over_sft_step": median("dpo", "step_s") / median("sft", "step_s"),
        "ratio_vs_naive": median("dpo", "tokens_per_s") / median("naive", "tokens_per_s"),
        "peak_rss_ratio_vs_naive": median("dpo", "peak_rss_mb") / median("naive", "peak_rss_mb"),
        "reference_s": median("dpo", "reference_s"),
        "gradient_checkpointing": args.gradient_checkpointing,
        "trl_gradient_checkpointing": bool(args.trl_python) and not args.trl_no_checkpointing,
    }
    if args.trl_python:
        summary["trl_step_s"] = median("trl", "step_s")
        summary["ratio_vs_trl"] = median("dpo", "tokens_per_s") / median("trl", "tokens_per_s")
        summary["peak_rss_ratio_vs_trl"] = median("dpo", "peak_rss_mb") / median(
            "trl", "peak_rss_mb"
        )
        summary["trl_first_loss"] = results["trl"][0].get("first_loss")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
