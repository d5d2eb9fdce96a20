"""Adding and pulling models: validated, recorded with hashes and licence, never half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cuvee import catalog, model_import
from cuvee.errors import CatalogError, ModelFileError, StoreError
from cuvee.progress import SilentReporter
from cuvee.store import ModelStore, sha256_file
from helpers import fake_catalog_entry


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "home" / "models")


def _assert_nothing_registered(store: ModelStore) -> None:
    assert store.names() == []
    assert not store.staging_root.exists() or list(store.staging_root.iterdir()) == []


def test_add_hf_directory_records_manifest(store: ModelStore, tiny_gemma_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = model_import.add(store, tiny_gemma_dir, "tiny", SilentReporter(), licence="apache-2.0")
    man = model.manifest
    assert man.kind == "base"
    assert man.architecture == "gemma3"
    assert man.model_type == "gemma3_text"
    assert man.chat_template == "gemma"
    assert man.licence.id == "Apache-2.0" and man.licence.commercial_use is True
    assert man.source.type == "local" and man.source.path == str(tiny_gemma_dir.resolve())
    reference = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir)
    assert man.parameters == reference.num_parameters()
    by_path = {f.path: f for f in man.files}
    weights = by_path["model.safetensors"]
    assert weights.role == "weights"
    assert weights.sha256 == sha256_file(tiny_gemma_dir / "model.safetensors")
    assert by_path["tokenizer.json"].role == "tokenizer"
    assert man.path == str(store.model_dir("tiny"))
    on_disk = json.loads((model.path / "cuvee.json").read_text())
    assert on_disk["licence"]["id"] == "Apache-2.0"


def test_added_model_loads_with_transformers(store: ModelStore, tiny_gemma_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = model_import.add(store, tiny_gemma_dir, "tiny", SilentReporter())
    ids = torch.tensor([[2, 6, 7, 8]])
    expected = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir)(ids).logits
    got = AutoModelForCausalLM.from_pretrained(model.path)(ids).logits
    torch.testing.assert_close(got, expected)


def test_add_refuses_a_taken_name(store: ModelStore, tiny_gemma_dir: Path) -> None:
    model_import.add(store, tiny_gemma_dir, "tiny", SilentReporter())
    before = (store.model_dir("tiny") / "cuvee.json").read_bytes()
    with pytest.raises(StoreError, match="already in the store"):
        model_import.add(store, tiny_gemma_dir, "tiny", SilentReporter())
    assert (store.model_dir("tiny") / "cuvee.json").read_bytes() == before


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("config.json", "no config.json"),
        ("model.safetensors", "no \\*.safetensors weights"),
        ("tokenizer.json", "no tokenizer"),
    ],
)
def test_add_rejects_an_incomplete_directory(
    store: ModelStore, tiny_gemma_dir: Path, tmp_path: Path, remove: str, message: str
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_gemma_dir, broken)
    (broken / remove).unlink()
    with pytest.raises(ModelFileError, match=message) as info:
        model_import.add(store, broken, "broken", SilentReporter())
    assert str(broken) in str(info.value)
    _assert_nothing_registered(store)


def test_add_rejects_config_without_model_type(
    store: ModelStore, tiny_gemma_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_gemma_dir, broken)
    (broken / "config.json").write_text('{"hidden_size": 32}')
    with pytest.raises(ModelFileError, match='"model_type" is missing'):
        model_import.add(store, broken, "broken", SilentReporter())
    _assert_nothing_registered(store)


def test_add_rejects_a_file_that_is_not_gguf(store: ModelStore, tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        model_import.add(store, fake, "fake", SilentReporter())
    _assert_nothing_registered(store)


def _tiny_gguf(path: Path) -> Path:
    """A small, valid GGUF with one tensor, written with the gguf package."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_tensor("token_embd.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_inspect_gguf_reads_a_valid_file(tmp_path: Path) -> None:
    info = model_import.inspect_gguf(_tiny_gguf(tmp_path / "tiny.gguf"))
    assert info.architecture == "llama" and info.tensor_count == 1 and info.name == "tiny"


@pytest.mark.parametrize("keep", [10, 200, 0.5])
def test_a_truncated_gguf_is_rejected(store: ModelStore, tmp_path: Path, keep: float) -> None:
    whole = _tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    cut = int(len(whole) * keep) if isinstance(keep, float) else keep
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(whole[:cut])
    with pytest.raises(ModelFileError) as info:
        model_import.add(store, truncated, "cut", SilentReporter())
    assert str(truncated) in str(info.value)
    assert "truncated" in str(info.value) or "corrupt" in str(info.value)
    _assert_nothing_registered(store)


def test_an_unconvertible_architecture_is_named(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv7")
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError, match="'rwkv7' cannot be converted") as info:
        model_import.convert_gguf_to_hf(path, tmp_path / "out", SilentReporter())
    assert "gemma3" in info.value.hint


# ------------------------------------------------------------------------------ catalog pulls


def test_unknown_catalog_name_lists_known_ones(store: ModelStore) -> None:
    with pytest.raises(CatalogError, match="not in cuvee's catalog") as info:
        model_import.pull(store, "gpt-5", SilentReporter())
    assert "gemma3-270m" in info.value.hint


def test_missing_package_gives_the_pip_line(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = catalog.CATALOG["gemma3-270m"]
    missing = catalog._obtain_from_chunk_package(
        "no-such-model-pkg", "no_such_model_pkg", "gemma3-270m"
    )
    monkeypatch.setitem(
        catalog.CATALOG, "gemma3-270m", catalog.CatalogEntry(**{**vars(entry), "obtain": missing})
    )
    with pytest.raises(CatalogError, match="not installed") as info:
        model_import.pull(store, "gemma3-270m", SilentReporter())
    assert "pip install no-such-model-pkg" in info.value.hint
    _assert_nothing_registered(store)


@pytest.fixture
def fake_catalog(monkeypatch: pytest.MonkeyPatch, tiny_gemma_dir: Path) -> dict[str, int]:
    """A catalog entry whose 'GGUF' converts to the tiny model, counting how often it is built."""
    calls = {"obtain": 0}

    def obtain(directory: Path, reporter) -> catalog.ObtainedFile:
        calls["obtain"] += 1
        path = directory / "tiny.gguf"
        path.write_bytes(b"GGUF stand-in")
        return catalog.ObtainedFile(path, sha256_file(path), "tiny-pkg", "1.0")

    def convert(gguf_path: Path, out_dir: Path, reporter) -> None:
        for f in tiny_gemma_dir.iterdir():
            shutil.copy(f, out_dir / f.name)

    entry = fake_catalog_entry("tiny-base", "tiny-pkg", obtain)

    def check(gguf_path: Path, model_dir: Path, reporter) -> dict:
        calls["check"] += 1  # the stand-in GGUF has nothing llama.cpp could run
        return {"probe_tokens": 1, "top1_agreement": 1.0}

    calls["check"] = 0
    monkeypatch.setitem(catalog.CATALOG, "tiny-base", entry)
    monkeypatch.setattr(model_import, "convert_gguf_to_hf", convert)
    monkeypatch.setattr(model_import, "check_conversion", check)
    return calls


def test_pull_records_source_and_licence_and_is_idempotent(
    store: ModelStore, fake_catalog: dict[str, int]
) -> None:
    model = model_import.pull(store, "tiny-base", SilentReporter())
    man = model.manifest
    assert man.source.type == "catalog" and man.source.package == "tiny-pkg"
    assert man.source.original_sha256 == sha256_file(model.path / "tiny.gguf")
    assert man.file("gguf") is not None
    assert man.licence.id == "Gemma"
    assert man.licence.osi_approved is False
    assert "Prohibited Use Policy" in man.licence.notes
    assert man.chat_template == "gemma"
    assert fake_catalog["check"] == 1
    assert man.model_dump()["conversion_check"]["top1_agreement"] == 1.0
    model_import.pull(store, "tiny-base", SilentReporter())
    assert fake_catalog["obtain"] == 1
    model_import.pull(store, "tiny-base", SilentReporter(), force=True)
    assert fake_catalog["obtain"] == 2


def test_an_interrupted_pull_registers_nothing(
    store: ModelStore, fake_catalog: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def convert_then_fail(gguf_path: Path, out_dir: Path, reporter) -> None:
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(model_import, "convert_gguf_to_hf", convert_then_fail)
    with pytest.raises(KeyboardInterrupt):
        model_import.pull(store, "tiny-base", SilentReporter())
    _assert_nothing_registered(store)
