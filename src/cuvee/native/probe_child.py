"""The engine probe's child: build a tiny GGUF, quantize it with llama.cpp, load it in one
configuration and decode a few tokens. If llama.cpp crashes here, only this process dies.

    python -m cuvee.native.probe_child repack|plain WORKDIR

Prints one JSON line (the model buffer types llama.cpp used) and exits 0 when all went well.
The model is shaped so the quantized matrices take the same kernels a real model's do: rows of
256 (the K-quant block), Q4_K_M like the default base model.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

import numpy as np

N_EMBD, N_FF, N_HEAD, N_VOCAB, N_CTX = 256, 512, 4, 512, 128
_Q4_K_M = 15  # llama_ftype LLAMA_FTYPE_MOSTLY_Q4_K_M


def write_tiny_gguf(path: Path, seed: int = 0) -> None:
    """A one-layer llama-architecture model with random weights and a byte-level SPM vocab."""
    import gguf

    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(N_VOCAB - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (N_VOCAB - 259)  # unknown, control, byte, normal
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(1)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all F32
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * N_VOCAB)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    tensors = {
        "token_embd.weight": weight(N_VOCAB, N_EMBD),
        "blk.0.attn_norm.weight": np.ones(N_EMBD, np.float32),
        "blk.0.attn_q.weight": weight(N_EMBD, N_EMBD),
        "blk.0.attn_k.weight": weight(N_EMBD, N_EMBD),
        "blk.0.attn_v.weight": weight(N_EMBD, N_EMBD),
        "blk.0.attn_output.weight": weight(N_EMBD, N_EMBD),
        "blk.0.ffn_norm.weight": np.ones(N_EMBD, np.float32),
        "blk.0.ffn_gate.weight": weight(N_FF, N_EMBD),
        "blk.0.ffn_up.weight": weight(N_FF, N_EMBD),
        "blk.0.ffn_down.weight": weight(N_EMBD, N_FF),
        "output_norm.weight": np.ones(N_EMBD, np.float32),
        "output.weight": weight(N_VOCAB, N_EMBD),
    }
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def run(repack: bool, workdir: Path) -> dict:
    import llama_cpp as llama

    log: list[str] = []

    @llama.llama_log_callback
    def keep(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        log.append(text.decode("utf-8", "replace"))

    llama.llama_log_set(keep, ctypes.c_void_p(0))
    llama.llama_backend_init()

    f32, q4 = workdir / "tiny-f32.gguf", workdir / "tiny-q4_k_m.gguf"
    if not q4.exists():
        write_tiny_gguf(f32)
        params = llama.llama_model_quantize_default_params()
        params.ftype = _Q4_K_M
        params.nthread = 2
        if llama.llama_model_quantize(str(f32).encode(), str(q4).encode(), ctypes.byref(params)):
            raise SystemExit("llama.cpp could not quantize the probe model")

    mparams = llama.llama_model_default_params()
    mparams.use_extra_bufts = repack
    model = llama.llama_model_load_from_file(str(q4).encode(), mparams)
    if not model:
        raise SystemExit("llama.cpp could not load the probe model:\n" + "".join(log[-5:]))
    cparams = llama.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = N_CTX
    cparams.n_threads = cparams.n_threads_batch = 2
    ctx = llama.llama_init_from_model(model, cparams)
    if not ctx:
        raise SystemExit("llama.cpp could not create a context:\n" + "".join(log[-5:]))

    # A batched prefill (matrix-matrix products) then single tokens (matrix-vector products).
    tokens = [1, *range(300, 316)]
    generated: list[int] = []
    for step in range(5):
        ids = tokens if step == 0 else generated[-1:]
        array = (ctypes.c_int32 * len(ids))(*ids)  # kept alive: the batch points into it
        batch = llama.llama_batch_get_one(array, len(ids))
        rc = llama.llama_decode(ctx, batch)
        if rc != 0:
            raise SystemExit(f"llama_decode returned {rc} at step {step}:\n" + "".join(log[-5:]))
        logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, -1), shape=(N_VOCAB,))
        if not np.isfinite(logits).all():
            raise SystemExit("llama.cpp computed non-finite logits on the probe model")
        generated.append(int(np.argmax(logits)))
    llama.llama_free(ctx)
    llama.llama_model_free(model)
    # "load_tensors:   CPU_REPACK model buffer size =  0.25 MiB" -> "CPU_REPACK"
    buffers = sorted(
        {line.split(":", 1)[-1].split(" model buffer")[0].strip() for line in log
         if " model buffer size" in line}
    )  # fmt: skip
    return {"repack": repack, "tokens": generated, "buffers": buffers}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("repack", "plain"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    report = run(argv[0] == "repack", Path(argv[1]))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
