"""Preference-loss parity: cuvee's DPO loss, rewards and margins against TRL's DPOTrainer on one
fixed batch where the policy differs from its reference (the issue's goal: equal within 1e-4).

A tiny random Gemma 3 text model (fp32, sliding-window and full layers, a prompt longer than the
window) is registered in a throw-away cuvee store; cuvee builds its LoRA model for it as a run
does (``build_model``: its lean LoRA forward, eager attention), and the adapter's B matrices are
set to seeded random values (``--b-std``) and saved with ``save_pretrained``. The policy is the
model with that adapter, the reference the same model with it disabled, as both cuvee and TRL
(given a ``peft_config``) take it. The batch is fixed token ids (prompt, chosen, rejected of
different lengths), so no tokenizer or chat template enters the comparison.

cuvee's side: ``AnswerLogProbs`` for the policy's summed log-probabilities,
``reference_logprobs`` (adapter disabled) for the reference's, ``PreferenceLoss`` on the rows
``answer_batch`` makes, one pair a row and all pairs in one packed row.

TRL's side, run by ``--trl-python`` (a throw-away venv with trl and peft, never cuvee's): the
same model directory, a DPOTrainer (DPOConfig beta, loss_type sigmoid then ipo, fp32, no
precomputed reference) built with the same LoRA config, the saved adapter loaded into it, the
batch collated by the trainer's own collator; ``compute_ref_log_probs`` gives the reference
log-probabilities, ``compute_loss`` the loss and its logged metrics (per pair: one call per
pair; and the whole batch in one call).

Both sides define a reward as ``beta * (policy - reference)`` of an answer's summed
log-probability and the margin as chosen minus rejected reward; ipo uses the length-averaged
log-ratios on both sides.

    python bench/pref_parity.py --trl-python /tmp/trl/bin/python

The last line printed is one JSON object: ``max_abs_diff_loss`` (sigmoid and ipo;
``max_abs_diff_loss_sigmoid`` DPO's alone), ``max_abs_diff_rewards``, ``max_abs_diff_margins``,
``max_abs_diff_logps`` (policy and reference), ``within_1e-4`` and the machine."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TOLERANCE = 1e-4
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
WORDS = ["the", "a", "of", "to", "and", "is", "in", "it", "you", "that", "hello", "world"]
WORDS += ["answer", "question", "model", "user"]

# (prompt, chosen, rejected) token ids; ids 6-21 are the tiny tokenizer's words. The first
# prompt is longer than the sliding window (16), so both kinds of layer matter; the answers
# differ in length within and across pairs.
PAIRS = [
    (
        [2, 4, 7, 12, 9, 15, 6, 18, 11, 20, 8, 13, 16, 10, 19, 7, 14, 21, 9, 5, 4],
        [17, 12, 8, 6, 20, 5],
        [9, 14, 5],
    ),
    ([2, 4, 16, 11, 7, 19, 5, 4], [10, 21, 13, 5], [6, 8, 18, 12, 15, 11, 20, 5]),
    ([2, 4, 13, 6, 20, 9, 14, 8, 17, 12, 5, 4], [11, 5], [19, 7, 16, 5]),
]

# TRL's side, run by --trl-python: prints one JSON object.
TRL_SIDE = r"""
import json, sys
import torch
from datasets import Dataset
from peft import LoraConfig, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

spec = json.loads(sys.argv[1])
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(spec["model"])
adapter = json.load(open(spec["adapter"] + "/adapter_config.json"))
weights = load_file(spec["adapter"] + "/adapter_model.safetensors")
examples = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in spec["pairs"]]
# only to build the trainer: the batch compared is given as token ids
words = Dataset.from_list([{"prompt": "hello", "chosen": " world", "rejected": " the"}])

def trainer_for(loss_type):
    model = AutoModelForCausalLM.from_pretrained(
        spec["model"], dtype=torch.float32, attn_implementation="eager")
    lora = LoraConfig(r=adapter["r"], lora_alpha=adapter["lora_alpha"], lora_dropout=0.0,
                      target_modules=sorted(adapter["target_modules"]), task_type="CAUSAL_LM")
    config = DPOConfig(
        output_dir=spec["out"], per_device_train_batch_size=len(examples), beta=spec["beta"],
        loss_type=loss_type, bf16=False, fp16=False, use_cpu=True, report_to=[],
        save_strategy="no", dataloader_num_workers=0, seed=0, max_length=None,
        precompute_ref_log_probs=False)
    trainer = DPOTrainer(model=model, args=config, train_dataset=words,
                         processing_class=tokenizer, peft_config=lora)
    # the adapter cuvee saved, into the trainer's own peft model (a new adapter there, so its
    # reference is the model with adapters disabled, as in cuvee)
    result = set_peft_model_state_dict(trainer.model, weights)
    assert not result.unexpected_keys, result.unexpected_keys
    assert not [k for k in result.missing_keys if "lora_" in k], result.missing_keys
    trainer.model.eval()
    return trainer

def call(trainer, chunk):
    batch = trainer._prepare_inputs(trainer.data_collator(chunk))
    mode = "train" if trainer.model.training else "eval"
    trainer._metrics[mode].clear()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        ref_c, ref_r = trainer.compute_ref_log_probs(trainer.model, batch)
    metrics = {k: v[-1] for k, v in trainer._metrics[mode].items()}
    return float(loss), metrics, ref_c.tolist(), ref_r.tolist()

out = {}
for loss_type in spec["losses"]:
    trainer = trainer_for(loss_type)
    loss, metrics, ref_c, ref_r = call(trainer, examples)
    per = [call(trainer, [e]) for e in examples]
    out[loss_type] = {
        "loss": loss,  # the batch's mean
        "metrics": {k: metrics[k] for k in ("rewards/chosen", "rewards/rejected",
                                             "rewards/margins", "rewards/accuracies",
                                             "logps/chosen", "logps/rejected")},
        "per_pair": {
            "loss": [p[0] for p in per],
            "rewards_chosen": [p[1]["rewards/chosen"] for p in per],
            "rewards_rejected": [p[1]["rewards/rejected"] for p in per],
            "margin": [p[1]["rewards/margins"] for p in per],
            "policy_chosen": [p[1]["logps/chosen"] for p in per],
            "policy_rejected": [p[1]["logps/rejected"] for p in per],
            "reference_chosen": ref_c,
            "reference_rejected": ref_r,
        },
    }
print(json.dumps(out))
"""


def build_tiny_model(directory: Path, seed: int) -> None:
    """A 3-layer random Gemma 3 text model (sliding, full, sliding) in fp32, with a word-level
    tokenizer holding Gemma's special tokens, saved as a Hugging Face directory."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=128,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    Gemma3ForCausalLM(config).to(torch.float32).save_pretrained(directory)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    ).save_pretrained(directory)


def cuvee_side(args: argparse.Namespace, work: Path, losses: list[str]) -> tuple[dict, str, str]:
    """cuvee's figures for each loss, the stored model's directory and the saved adapter's."""
    from contextlib import nullcontext

    import torch

    from cuvee.config import load_settings
    from cuvee.model_import import add
    from cuvee.progress import SilentReporter
    from cuvee.store import ModelStore
    from cuvee.train.data import Prepared
    from cuvee.train.pairs import Unit, UnitRow, answer_batch, pack_units
    from cuvee.train.preference import PreferenceLoss, reference_logprobs, with_reference
    from cuvee.train.preference_loss import finished_stats
    from cuvee.train.recipe import Recipe
    from cuvee.train.surgery import build_model

    build_tiny_model(work / "tiny", args.seed)
    store = ModelStore(load_settings().models_dir)
    add(store, work / "tiny", "tiny", SilentReporter(), licence="MIT")
    base = store.get("tiny")
    cpu = torch.device("cpu")

    def recipe_for(loss_type: str) -> Recipe:
        return Recipe(base="tiny", method="dpo", loss_type=loss_type, beta=args.beta,
                      lora_r=8, lora_alpha=16, lora_dropout=0.0, train_turn_tokens=False,
                      packing=False, precision="fp32", seed=args.seed)  # fmt: skip

    recipe = recipe_for("sigmoid")
    prepared = Prepared(recipe=recipe, base=base, sources=[], train_rows=[], eval_rows=[],
                        split_how="none", encode_stats={}, train_records=0, eval_records=0,
                        template="gemma", turn_token_ids=[])  # fmt: skip
    model = build_model(store, prepared, "fp32", cpu)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * args.b_std)
    adapter_dir = work / "adapter"
    model.save_pretrained(adapter_dir)

    units = [Unit(tuple(p), tuple(c), tuple(r), None) for p, c, r in PAIRS]
    rows = pack_units(units, 2 * 64, packing=False, seed=args.seed)  # one pair a row, in order
    out = {}
    for loss_type in losses:
        module = PreferenceLoss(model, torch.float32, recipe_for(loss_type))
        ref = reference_logprobs(module, rows, 2, cpu, nullcontext)  # adapter disabled
        referenced = with_reference(rows, ref)
        module.eval()
        with torch.no_grad():
            policy, _ = module(**answer_batch(referenced, cpu), logprobs_only=True)
            policy = policy.view(-1, 2)
            per = []
            for row in referenced:
                loss, stats = module(**answer_batch([row], cpu))
                per.append((float(loss), finished_stats(module.spec, stats.tolist())))
            loss_sum, stats = module(**answer_batch(referenced, cpu))
            packed = UnitRow(tuple(u for r in referenced for u in r.units))
            packed_sum, _ = module(**answer_batch([packed], cpu))
        means = finished_stats(module.spec, stats.tolist())
        out[loss_type] = {
            "loss": float(loss_sum) / len(rows),
            "loss_packed_row": float(packed_sum) / len(rows),
            "metrics": {
                "rewards/chosen": means["rewards_chosen"],
                "rewards/rejected": means["rewards_rejected"],
                "rewards/margins": means["margin"],
                "rewards/accuracies": means["accuracy"],
                "logps/chosen": float(policy[:, 0].mean()),
                "logps/rejected": float(policy[:, 1].mean()),
            },
            "per_pair": {
                "loss": [p[0] for p in per],
                "rewards_chosen": [p[1]["rewards_chosen"] for p in per],
                "rewards_rejected": [p[1]["rewards_rejected"] for p in per],
                "margin": [p[1]["margin"] for p in per],
                "policy_chosen": policy[:, 0].tolist(),
                "policy_rejected": policy[:, 1].tolist(),
                "reference_chosen": ref[:, 0].tolist(),
                "reference_rejected": ref[:, 1].tolist(),
            },
        }
    return out, str(base.path), str(adapter_dir)


def _max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trl-python",
        required=True,
        help="python of a throw-away venv with trl and peft (never cuvee's own)",
    )
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument(
        "--b-std", type=float, default=0.3, help="std of the adapter's B matrices (seeded)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ipo", action="store_true", help="the sigmoid loss only")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe

    machine = describe()
    losses = ["sigmoid"] if args.no_ipo else ["sigmoid", "ipo"]
    work = Path(tempfile.mkdtemp(prefix="pref-parity-"))
    # a throw-away store: nothing touches the user's models
    os.environ["CUVEE_HOME"] = str(work / "home")
    os.environ["CUVEE_TRAIN_COMPILE"] = "off"
    os.environ["HF_HUB_OFFLINE"] = "1"
    ours, model_dir, adapter_dir = cuvee_side(args, work, losses)

    spec = {"model": model_dir, "adapter": adapter_dir, "pairs": PAIRS, "beta": args.beta,
            "losses": losses, "out": str(work / "trl")}  # fmt: skip
    (work / "trl_side.py").write_text(TRL_SIDE)
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [args.trl_python, str(work / "trl_side.py"), json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"TRL side failed:\n{proc.stderr[-3000:]}")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(work, ignore_errors=True)
    version = subprocess.run(
        [args.trl_python, "-c", "import trl, peft; print(trl.__version__, peft.__version__)"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip

    diffs: dict[str, dict[str, float]] = {}
    for loss_type in losses:
        a, b = ours[loss_type], theirs[loss_type]
        print(f"\n{loss_type} (beta {args.beta}), per pair: cuvee | TRL DPOTrainer | |diff|")
        d: dict[str, float] = {}
        for key in a["per_pair"]:
            xs, ys = a["per_pair"][key], b["per_pair"][key]
            d[key] = _max_diff(xs, ys)
            cells = "  ".join(f"{x:+.6f} | {y:+.6f}" for x, y in zip(xs, ys, strict=True))
            print(f"  {key:<22} {cells}   max |diff| {d[key]:.2e}")
        d["batch_loss"] = abs(a["loss"] - b["loss"])
        d["packed_row_loss"] = abs(a["loss_packed_row"] - b["loss"])
        print(f"  {'batch mean loss':<22} {a['loss']:+.6f} | {b['loss']:+.6f}   "
              f"|diff| {d['batch_loss']:.2e} (cuvee, pairs packed in one row: "
              f"{a['loss_packed_row']:+.6f}, |diff| {d['packed_row_loss']:.2e})")  # fmt: skip
        for key, x in a["metrics"].items():
            y = b["metrics"][key]
            d[f"batch {key}"] = abs(x - y)
            print(f"  batch {key:<16} {x:+.6f} | {y:+.6f}   |diff| {abs(x - y):.2e}")
        diffs[loss_type] = d

    def worst(*keys: str) -> float:
        return max(diffs[lt][k] for lt in losses for k in keys)

    summary = {
        "losses": losses,
        "beta": args.beta,
        "b_std": args.b_std,
        "pairs": len(PAIRS),
        "max_abs_diff_loss": worst("loss", "batch_loss", "packed_row_loss"),
        "max_abs_diff_loss_sigmoid": max(
            diffs["sigmoid"][k] for k in ("loss", "batch_loss", "packed_row_loss")
        ),
        "max_abs_diff_rewards": worst(
            "rewards_chosen", "rewards_rejected", "batch rewards/chosen", "batch rewards/rejected"
        ),
        "max_abs_diff_margins": worst("margin", "batch rewards/margins"),
        "max_abs_diff_logps": worst(
            "policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected"
        ),
        "max_abs_margin": max(abs(m) for m in ours["sigmoid"]["per_pair"]["margin"]),
        "trl": version[0] if version else None,
        "trl_peft": version[1] if len(version) > 1 else None,
        "machine": machine,
    }
    summary["within_1e-4"] = all(
        summary[k] <= TOLERANCE
        for k in ("max_abs_diff_loss", "max_abs_diff_rewards", "max_abs_diff_margins")
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
