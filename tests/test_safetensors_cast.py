"""Loading fp32 weights as bf16 by reading and casting slice by slice gives the model
transformers' own loader gives, tensor for tensor."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from cuvee import safetensors_cast  # noqa: E402
from cuvee.errors import ModelFileError  # noqa: E402
from cuvee.model_loading import _from_dir  # noqa: E402


def _plain(directory: Path, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(directory), dtype=dtype, attn_implementation="sdpa"
    )


@pytest.mark.parametrize("fixture", ["tiny_gemma_dir", "tiny_llama_dir"])
def test_cast_while_reading_equals_transformers_loader(request, fixture, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    directory = request.getfixturevalue(fixture)
    monkeypatch.setattr(safetensors_cast, "_SLICE_BYTES", 40)  # many slices per tensor
    ours = _from_dir(AutoModelForCausalLM, directory, torch.bfloat16)
    theirs = _plain(directory, torch.bfloat16)
    assert not ours.training and not theirs.training
    mine, want = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == want.keys()
    for name, tensor in want.items():
        assert mine[name].dtype == tensor.dtype, name
        assert torch.equal(mine[name], tensor), name
    # tied heads stay tied, and the generation settings come along
    if theirs.config.tie_word_embeddings:
        assert ours.get_output_embeddings().weight is ours.get_input_embeddings().weight
    assert ours.generation_config.eos_token_id == theirs.generation_config.eos_token_id
    assert ours.config._name_or_path == theirs.config._name_or_path == str(directory)
    ids = torch.tensor([[2, 5, 9, 11]])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)


def test_the_cast_reader_is_used_only_when_dtypes_differ(tiny_gemma_dir, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    calls = []
    real = safetensors_cast.read_cast
    monkeypatch.setattr(safetensors_cast, "read_cast", lambda *a: calls.append(a[1]) or real(*a))
    _from_dir(AutoModelForCausalLM, tiny_gemma_dir, torch.float32)
    assert calls == []  # stored fp32, asked fp32: transformers maps the file as it is
    _from_dir(AutoModelForCausalLM, tiny_gemma_dir, torch.bfloat16)
    assert calls == [torch.bfloat16]


def test_a_truncated_checkpoint_is_a_clear_error(tiny_gemma_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    broken = tmp_path / "broken"
    shutil.copytree(tiny_gemma_dir, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelFileError, match="broken"):
        _from_dir(AutoModelForCausalLM, broken, torch.bfloat16)


def test_header_checks(tmp_path) -> None:
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="not a safetensors file"):
        safetensors_cast.header(short)
    odd = tmp_path / "odd.safetensors"
    table = {"x": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}
    blob = json.dumps(table).encode()
    odd.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(16))
    # a dtype the reader does not cast: it declines, and the usual loader takes over
    assert safetensors_cast.read_cast([odd], torch.bfloat16) is None
    assert not safetensors_cast.needs_cast([odd], torch.bfloat16)
