"""llama.cpp's logits for a token sequence, read straight from a GGUF: the known-answer check
of an export (does the GGUF predict what the unquantized model predicts?) and of a conversion
(does transformers read the GGUF as llama.cpp does?). Below the engines, beside the probe, so
the exporter and the importer use llama.cpp without importing the engine package."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cuvee.errors import ModelFileError
from cuvee.native import captured_stderr
from cuvee.native.probe import engine_verdict


def gguf_logits(path: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits for every position of ``ids`` (one row per token), read from a GGUF;
    the one place the probes of exports and of conversions open a model in llama.cpp. It loads
    the model as the engine does, with the engine probe's verdict on weight repacking (the
    high-level ``llama_cpp.Llama`` offers no such switch, and its default crashes on AMX CPUs)."""
    import llama_cpp as llama

    repack = engine_verdict().repack
    with captured_stderr() as log:
        mparams = llama.llama_model_default_params()
        mparams.use_extra_bufts = repack
        model = llama.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        tail = "\n".join("".join(log).strip().splitlines()[-5:])
        raise ModelFileError(f"llama.cpp cannot load {path.name}" + (f":\n{tail}" if tail else ""))
    ctx = batch = None
    try:
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = len(ids) + 8
        cparams.n_threads = cparams.n_threads_batch = os.cpu_count() or 1
        with captured_stderr():
            ctx = llama.llama_init_from_model(model, cparams)
        if not ctx:
            raise ModelFileError(f"llama.cpp cannot open a context on {path.name}")
        batch = llama.llama_batch_init(len(ids), 0, 1)
        for i, token in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, True
        batch.n_tokens = len(ids)
        with captured_stderr():
            rc = llama.llama_decode(ctx, batch)
        if rc != 0:
            raise ModelFileError(f"llama.cpp could not evaluate {path.name} (llama_decode {rc})")
        n_vocab = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(model))
        logits = np.ctypeslib.as_array(llama.llama_get_logits(ctx), shape=(len(ids), n_vocab))
        return logits.astype(np.float32, copy=True)
    finally:
        with captured_stderr():  # freeing the context logs its buffer sizes
            if batch is not None:
                llama.llama_batch_free(batch)
            if ctx:
                llama.llama_free(ctx)
            llama.llama_model_free(model)
