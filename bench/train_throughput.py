"""Training throughput: cuvee's loop against a plain Hugging Face Trainer + peft baseline.

Same model (gemma3-270m from the store), data (alpaca_en_demo.json from ../shared/data, read
here only), chat template, sequence length (256), LoRA (r=16, alpha=32, dropout 0.05, all linear
layers), 8 rows of 256 tokens per optimizer step, learning rate, and loss on the answers only.
The baseline is the strongest plain configuration: bf16=True where the CPU has native bf16,
padding to the longest record of each batch, and length-grouped sampling to waste less on
padding. Each side runs in its own process so peak RSS is its own.

Tokens/s counts real tokens only (padding excluded, for both), measured after warm-up steps (so
cuvee's one-off kernel compilation, about 20 s, is not counted). cuvee runs micro-batches of 8
rows by default (the same 8 rows per optimizer step as the baseline's single batch).

    python bench/train_throughput.py [--quick] [--repeat N] [--micro 4] [--home ~/.cuvee]

On a machine with a CUDA GPU both sides train on it (cuvee picks the GPU by itself; the
baseline drops ``use_cpu``), and the memory figures are peak GPU memory allocated instead.

The last line printed is one JSON object with the figures."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_en_demo.json"
SEQ_LEN = 256
ROWS_PER_STEP = 8
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
LR = 2e-4


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _peak_mb() -> float:
    """Peak GPU memory allocated when training ran on the GPU, else the process's peak RSS."""
    from cuvee.train.throughput import peak_memory_mb

    return peak_memory_mb("cuda" if _on_gpu() else "cpu")


def _throughput(marks: list[tuple[float, int]], warmup: int) -> float:
    """Tokens per second over the steps after ``warmup``: marks are (end time, tokens)."""
    measured = marks[warmup:]
    span = measured[-1][0] - marks[warmup - 1][0]
    return sum(n for _, n in measured) / span


def run_cuvee(home: str, data: Path, steps: int, warmup: int, micro: int) -> dict:
    from cuvee.config import load_settings
    from cuvee.store import ModelStore
    from cuvee.train.loop import train
    from cuvee.train.recipe import Recipe

    settings = load_settings({"home": home})
    name = f"bench-throughput-{os.getpid()}"
    recipe = Recipe(
        base="gemma3-270m",
        data=[str(data)],
        name=name,
        seq_len=SEQ_LEN,
        batch_size=micro,
        grad_accum=ROWS_PER_STEP // micro,
        lr=LR,
        max_steps=steps,
        lora_r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        eval_split="none",
        save_every=10_000,
    )
    marks: list[tuple[float, int]] = []
    started = time.perf_counter()
    result = train(
        settings, recipe, on_step=lambda s, m: marks.append((time.perf_counter(), m["tokens"]))
    )
    total = time.perf_counter() - started
    ModelStore(settings.models_dir).remove(name)
    return {
        "tokens_per_s": _throughput(marks, warmup),
        "peak_rss_mb": _peak_mb(),
        "memory": "GPU allocated" if _on_gpu() else "RSS",
        "steps": len(marks),
        "wall_s": total,
        "precision": result.summary["precision"],
        "kernels": result.summary["hardware"]["kernels"],
        "final_loss": result.losses[-1],
    }


def run_baseline(home: str, data: Path, steps: int, warmup: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from cuvee.chat_template import get_template
    from cuvee.data.formats import read_file
    from cuvee.model_import import drop_gguf_quantization
    from cuvee.train.throughput import bf16_supported

    model_dir = Path(home).expanduser() / "models" / "gemma3-270m"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = get_template("gemma")
    features = []
    for record in read_file(data).records:
        messages = record.messages()
        prompt = template.render(messages[:-1], add_generation_prompt=True, bos_token="<bos>")
        full = template.render(messages, bos_token="<bos>")
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:SEQ_LEN]
        labels = [-100] * min(len(p_ids), len(ids)) + ids[len(p_ids) :]
        if any(t != -100 for t in labels):
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    drop_gguf_quantization(config)  # stores from cuvee 0.1.0 kept it; it is not a GGUF load
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, config=config, dtype=torch.float32, use_safetensors=True
    )
    model = get_peft_model(
        model,
        LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    batch_tokens: list[int] = []

    def collate(batch):
        out = collator(batch)
        batch_tokens.append(int(out["attention_mask"].sum()))
        return out

    marks: list[tuple[float, int]] = []

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), batch_tokens[len(marks)]))

    on_gpu = _on_gpu()
    out_dir = tempfile.mkdtemp(prefix="bench-hf-")
    args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=ROWS_PER_STEP,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        max_steps=steps,
        bf16=bf16_supported("cuda" if on_gpu else "cpu"),
        train_sampling_strategy="group_by_length",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=not on_gpu,
        seed=42,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=collate,
        callbacks=[Marks()],
    )
    started = time.perf_counter()
    out = trainer.train()
    return {
        "tokens_per_s": _throughput(marks, warmup),
        "peak_rss_mb": _peak_mb(),
        "memory": "GPU allocated" if _on_gpu() else "RSS",
        "steps": len(marks),
        "wall_s": time.perf_counter() - started,
        "precision": "bf16" if args.bf16 else "fp32",
        "final_loss": out.training_loss,
    }


def _child(which: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        which,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--home",
        args.home,
        "--micro",
        str(args.micro),
        "--data",
        str(args.data),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{which} run failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (about 10 minutes)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--micro", type=int, default=8, help="cuvee rows per micro-batch")
    parser.add_argument(
        "--repeat", type=int, default=1, help="alternate the two runs this many times (medians)"
    )
    parser.add_argument("--home", default=os.environ.get("CUVEE_HOME", "~/.cuvee"))
    parser.add_argument("--data", type=Path, default=DATA, help="alpaca_en_demo.json")
    parser.add_argument("--child", choices=["cuvee", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.home = str(Path(args.home).expanduser())
    if args.steps is None:
        args.steps = 10 if args.quick else 30
    if args.child:
        fn = run_cuvee if args.child == "cuvee" else run_baseline
        extra = (args.micro,) if args.child == "cuvee" else ()
        print(json.dumps(fn(args.home, args.data, args.steps, args.warmup, *extra)))
        return
    machine = describe()  # the children's stdout is parsed, so only the parent prints it
    if not args.data.is_file():
        raise SystemExit(f"benchmark data not found: {args.data}")
    if not (Path(args.home) / "models" / "gemma3-270m").is_dir():
        raise SystemExit(f"gemma3-270m is not in {args.home}: run `cuvee models pull gemma3-270m`")
    print(
        f"data {args.data.name}, seq_len {SEQ_LEN}, {ROWS_PER_STEP} rows/step, LoRA {LORA}, "
        f"{args.steps} steps ({args.warmup} warm-up)",
        flush=True,
    )
    # The machine is shared: a run's speed can drift by a quarter between runs. With --repeat,
    # the two sides alternate and the figures are medians over the pairs.
    pairs = []
    for r in range(args.repeat):
        tag = f" [pair {r + 1}/{args.repeat}]" if args.repeat > 1 else ""
        base = _child("baseline", args)
        print(
            f"baseline (HF Trainer + peft, {base['precision']}){tag}: "
            f"{base['tokens_per_s']:.1f} tok/s, peak {base['memory']} {base['peak_rss_mb']:.0f} MB",
            flush=True,
        )
        ours = _child("cuvee", args)
        print(
            f"cuvee ({ours['precision']}, packed, micro-batch {args.micro}){tag}: "
            f"{ours['tokens_per_s']:.1f} tok/s, peak {ours['memory']} {ours['peak_rss_mb']:.0f} MB"
            f" ({ours['kernels']} kernels)",
            flush=True,
        )
        pairs.append((base, ours))
    ratios = [o["tokens_per_s"] / b["tokens_per_s"] for b, o in pairs]
    ratio = statistics.median(ratios)
    ours_tps = statistics.median(o["tokens_per_s"] for _, o in pairs)
    base_tps = statistics.median(b["tokens_per_s"] for b, _ in pairs)
    ours_mem = max(o["peak_rss_mb"] for _, o in pairs)
    base_mem = max(b["peak_rss_mb"] for b, _ in pairs)
    mem = ours_mem / base_mem
    print(f"ratio {ratio:.2f}x tokens/s, {mem:.2f}x peak memory (goal >= 2.5x, <= 0.5x)")
    print(
        json.dumps(
            {
                "ratio": round(ratio, 3),
                "cuvee_tokens_per_s": round(ours_tps, 1),
                "baseline_tokens_per_s": round(base_tps, 1),
                "cuvee_peak_rss_mb": round(ours_mem),
                "baseline_peak_rss_mb": round(base_mem),
                "memory_ratio": round(mem, 3),
                "memory_measured": pairs[0][1]["memory"],
                "pair_ratios": [round(x, 3) for x in ratios],
                "steps": args.steps,
                "warmup": args.warmup,
                "micro_batch": args.micro,
                "cuvee_kernels": pairs[0][1]["kernels"],
                "cuvee_precision": pairs[0][1]["precision"],
                "baseline_precision": pairs[0][0]["precision"],
                "machine": machine,
            }
        )
    )


if __name__ == "__main__":
    main()
