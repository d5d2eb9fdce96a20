"""`--format onnx`: the merged model as an ONNX graph (token ids in, logits out; no KV cache)
that ONNX Runtime runs, with the tokenizer files and chat template beside it."""

from __future__ import annotations

from pathlib import Path

from cuvee.export.base import Format
from cuvee.export.source import ExportSource
from cuvee.progress import Reporter

GRAPH = "model.onnx"


def _logits_module(model):
    """The model as ONNX wants it: plain tensor inputs, one output."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids):
            # an explicit all-ones mask: without one, transformers looks for packed sequences
            # in the positions with an op ONNX lacks (aten::diff)
            mask = torch.ones_like(input_ids)
            return self.lm(input_ids=input_ids, attention_mask=mask, use_cache=False).logits

    return Logits(model)


def _write(source: ExportSource, out: Path, quant, adapter_only: bool, reporter: Reporter) -> None:
    import torch

    out.mkdir(parents=True)
    reporter.step(f"merging and loading {source.name}")
    model = source.merged
    model.config._attn_implementation = "eager"  # plain ops: every ONNX runtime has them
    wrapper = _logits_module(model).eval()
    ids = torch.tensor([[2, 4, 5, 6, 7, 8]], dtype=torch.long)
    reporter.step("tracing to ONNX")
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (ids,),
            str(out / GRAPH),
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "logits": {0: "batch", 1: "sequence"},
            },
            opset_version=17,
            dynamo=False,
        )
    source.copy_tokenizer_files(out)


FORMAT = Format(
    name="onnx",
    description="an ONNX graph (ids in, logits out) with its tokenizer, for ONNX Runtime",
    quants=(),
    suffix="",
    write=_write,
)
