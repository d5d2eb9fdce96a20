"""A fine-tune's GGUF exports in plain llama-cpp-python and in cuvee's engine.

For each quantization: export the model, then answer the starter set's held-out instructions
greedily twice: through `llama_cpp.Llama(model_path=...).create_chat_completion` (which formats
with the GGUF's embedded template) and through cuvee's llama.cpp engine. Reports how often each
stopped by itself, and how often the two gave the same text.

    python bench/export_chat.py --model demo [--quant q8_0 q4_k_m] [--limit 20]

The last line printed is one JSON object with the figures."""

from __future__ import annotations

import argparse
import json
import time

from machine import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--quant", nargs="+", default=["q8_0", "q4_k_m"])
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--home", default=None)
    args = parser.parse_args()
    machine = describe()

    import llama_cpp

    from cuvee.config import load_settings
    from cuvee.data.starter import load_starter
    from cuvee.engine import open_engine
    from cuvee.engine.base import Request, SamplingParams
    from cuvee.export.formats import export
    from cuvee.native import captured_stderr
    from cuvee.progress import SilentReporter
    from cuvee.store import ModelStore

    settings = load_settings({"home": args.home})
    store = ModelStore(settings.models_dir)
    conversations = [r.messages()[:-1] for r in load_starter("heldout")[: args.limit]]
    results = {}
    for quant in args.quant:
        entry = export(
            settings, store, args.model, "gguf", quant=quant, force=True, reporter=SilentReporter()
        )
        with captured_stderr():
            plain = llama_cpp.Llama(model_path=entry["path"], n_ctx=1024, verbose=False)
        engine = open_engine("llamacpp", entry["path"])
        plain_stops = ours_stops = same = 0
        started = time.perf_counter()
        for messages in conversations:
            out = plain.create_chat_completion(
                messages=messages, max_tokens=args.max_tokens, temperature=0.0, repeat_penalty=1.0
            )
            choice = out["choices"][0]
            plain_stops += choice["finish_reason"] == "stop"
            params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
            done = engine.submit(Request(messages=messages, params=params)).collect()
            ours_stops += done.finished.reason == "stop"
            same += done.text.strip() == (choice["message"]["content"] or "").strip()
        engine.close()
        n = len(conversations)
        results[quant] = {
            "llama_cpp_python_stopped": plain_stops / n,
            "cuvee_engine_stopped": ours_stops / n,
            "same_text": same / n,
            "probe_agreement": entry.get("fidelity", {}).get("top1_agreement"),
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(
            f"{args.model} {quant}: stopped by itself {plain_stops}/{n} in llama-cpp-python, "
            f"{ours_stops}/{n} in cuvee's engine; same text {same}/{n}",
            flush=True,
        )
    print(
        json.dumps(
            {
                "model": args.model,
                "records": len(conversations),
                "results": results,
                "machine": machine,
            }
        )
    )


if __name__ == "__main__":
    main()
