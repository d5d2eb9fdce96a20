"""Did instruction tuning work? A fine-tuned model against its base on the starter's held-out
slice (never trained on): how often each stops by itself (emits EOS or the template's
end-of-turn) within the token limit, and each one's held-out loss on the reference answers.

    cuvee train --base gemma3-270m --data starter --name demo --time-budget 10m
    python bench/sft_quality.py --model demo [--base gemma3-270m] [--max-new-tokens 256]

The last line printed is one JSON object with the figures."""

from __future__ import annotations

import argparse
import json
import time

import torch
from machine import describe


def generate_stops(
    lm, tokenizer, prompts: list[str], stop_ids: list[int], max_new: int, batch: int
) -> list[dict]:
    """Greedy completions; for each, whether a stop token came before the limit."""
    tokenizer.padding_side = "left"
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            gen = lm.generate(
                **enc,
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row in gen[:, enc["input_ids"].shape[1] :].tolist():
            stop_at = next((j for j, t in enumerate(row) if t in stop_ids), None)
            text = tokenizer.decode(row[: stop_at if stop_at is not None else len(row)])
            out.append(
                {"stopped": stop_at is not None, "tokens": stop_at or len(row), "text": text}
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the fine-tuned model in the store")
    parser.add_argument("--base", default=None, help="default: the model's base")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="first N held-out records")
    parser.add_argument("--home", default=None)
    args = parser.parse_args()
    machine = describe()

    from transformers import AutoTokenizer

    from cuvee.chat_template import get_template
    from cuvee.config import load_settings
    from cuvee.data.starter import load_starter
    from cuvee.model_loading import load_causal_lm
    from cuvee.store import ModelStore
    from cuvee.tokenizer import load_tokenizer, special_tokens
    from cuvee.train.encode import Encoder
    from cuvee.train.packing import pack
    from cuvee.train.sft import SFTLoss, evaluate

    settings = load_settings({"home": args.home})
    store = ModelStore(settings.models_dir)
    tuned = store.get(args.model)
    base = store.get(args.base or tuned.manifest.parent)
    template = get_template(tuned.manifest.chat_template)
    heldout = load_starter("heldout")[: args.limit]
    bos, eos = special_tokens(base.path)
    tokenizer = AutoTokenizer.from_pretrained(str(base.path))
    end_of_turn = tokenizer.convert_tokens_to_ids(template.end_of_turn)
    stop_ids = [tokenizer.eos_token_id, end_of_turn]
    prompts = [
        template.render(r.messages()[:-1], add_generation_prompt=True, bos_token=bos)
        for r in heldout
    ]
    encoder = Encoder(load_tokenizer(base.path), template, bos_token=bos, eos_token=eos)
    examples, _ = encoder.encode_all(heldout, 1024)
    rows = pack(examples, 1024, tokenizer.pad_token_id or 0)

    print(
        f"{len(heldout)} held-out starter instructions; greedy, up to {args.max_new_tokens} "
        f"new tokens; stop tokens {stop_ids}",
        flush=True,
    )
    results = {}
    for label, stored in (("base", base), ("tuned", tuned)):
        lm = load_causal_lm(store, stored, dtype=torch.bfloat16)
        lm.eval()
        t0 = time.perf_counter()
        gens = generate_stops(lm, tokenizer, prompts, stop_ids, args.max_new_tokens, args.batch)
        seconds = time.perf_counter() - t0
        loss = evaluate(
            SFTLoss(lm, torch.bfloat16),
            rows,
            4,
            torch.device("cpu"),
            lambda: torch.autocast("cpu", dtype=torch.bfloat16),
        )
        stopped = sum(g["stopped"] for g in gens) / len(gens)
        results[label] = {
            "stop_rate": stopped,
            "heldout_loss": loss,
            "gen_seconds": seconds,
            "mean_tokens": sum(g["tokens"] for g in gens) / len(gens),
        }
        print(
            f"{label:<6} {stored.manifest.name}: stops by itself on {stopped:.0%}, "
            f"held-out loss {loss:.4f}, mean {results[label]['mean_tokens']:.0f} tokens, "
            f"{seconds:.0f} s",
            flush=True,
        )
        for g, r in list(zip(gens, heldout, strict=True))[:3]:
            print(f"  Q: {r.turns[0].content[:80]!r}\n  A: {g['text'][:160]!r}")
        del lm
    print(
        json.dumps(
            {
                "model": tuned.manifest.name,
                "base": base.manifest.name,
                "records": len(heldout),
                "tuned_stop_rate": round(results["tuned"]["stop_rate"], 4),
                "base_stop_rate": round(results["base"]["stop_rate"], 4),
                "tuned_heldout_loss": round(results["tuned"]["heldout_loss"], 4),
                "base_heldout_loss": round(results["base"]["heldout_loss"], 4),
                "max_new_tokens": args.max_new_tokens,
                "machine": machine,
            }
        )
    )


if __name__ == "__main__":
    main()
