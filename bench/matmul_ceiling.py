"""What this machine's matrix units allow the embedder: bf16, fp32 and int8 matrix-product rates
at all-MiniLM-L6-v2's shapes, and the share of the bf16 and int8 peaks that an ingest rate
would need for its matrix products alone.

    python bench/matmul_ceiling.py [--chunks-per-s 100] [--tokens 152] [--threads 2]

all-MiniLM-L6-v2 (6 layers, width 384, FFN 1536) does 2 * 6 * (4 * 384^2 + 2 * 384 * 1536)
FLOPs per token in its linear maps, plus attention's 2 * 2 * 6 * T * 384 at T tokens. The last
line printed is one JSON object with the figures."""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
from machine import describe

LAYERS, WIDTH, FFN = 6, 384, 1536
SHAPES = ((3072, 384, 1536), (3072, 1536, 384), (3072, 384, 384))  # 16 x 192 tokens


def rate(fn, ops: float, repeat: int = 20) -> float:
    """Operations per second (in G), the median of `repeat` timed calls after two warm-ups."""
    fn()
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return ops / statistics.median(times) / 1e9


def flops_per_token(tokens: int) -> float:
    linear = 2 * LAYERS * (4 * WIDTH * WIDTH + 2 * WIDTH * FFN)
    attention = 2 * 2 * LAYERS * tokens * WIDTH
    return float(linear + attention)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks-per-s", type=float, default=100.0)
    parser.add_argument("--tokens", type=int, default=152, help="tokens per chunk")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    machine = describe()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rates: dict[str, list[float]] = {"fp32": [], "bf16": [], "int8": []}
    for dtype, key in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for m, k, n in SHAPES:
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            rates[key].append(rate(lambda a=a, b=b: a @ b, 2 * m * k * n))
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notice for quantized tensors
        for m, k, n in SHAPES:
            lin = torch.nn.Linear(k, n)
            q = DynamicInt8Linear(k, n)
            scale = float(lin.weight.abs().max()) / 127
            q.set_weight_bias(
                torch.quantize_per_tensor(lin.weight.detach(), scale, 0, torch.qint8),
                lin.bias.detach(),
            )
            x = torch.randn(m, k)
            rates["int8"].append(rate(lambda q=q, x=x: q(x), 2 * m * k * n))
    for key, values in rates.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"{key:>5} matrix products at {SHAPES}: {shown} G op/s")

    need = args.chunks_per_s * args.tokens * flops_per_token(args.tokens) / 1e9
    peak = {key: max(values) for key, values in rates.items()}
    print(
        f"{args.chunks_per_s:.0f} chunks/s of {args.tokens} tokens need {need:.0f} G op/s of "
        f"matrix products: {need / peak['bf16']:.0%} of the bf16 peak, "
        f"{need / peak['int8']:.0%} of the int8 peak, before attention's softmax, norms, "
        "tokenisation and writing"
    )
    print(
        json.dumps(
            {
                "threads": args.threads,
                "gops_fp32": round(peak["fp32"], 1),
                "gops_bf16": round(peak["bf16"], 1),
                "gops_int8_dynamic": round(peak["int8"], 1),
                "chunks_per_s": args.chunks_per_s,
                "tokens_per_chunk": args.tokens,
                "needed_gops": round(need, 1),
                "share_of_bf16_peak": round(need / peak["bf16"], 3),
                "share_of_int8_peak": round(need / peak["int8"], 3),
                "machine": machine,
            }
        )
    )


if __name__ == "__main__":
    main()
