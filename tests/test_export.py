"""Exports on tiny random models: GGUF parity with Hugging Face through llama.cpp, quantized
greedy tokens, the embedded chat template, LoRA merge and adapter-only files, ONNX Runtime
parity, the Ollama Modelfile, manifest records and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cuvee.chat_template import get_template
from cuvee.errors import ConfigError, ModelFileError
from cuvee.export.formats import export
from cuvee.progress import SilentReporter
from helpers import run_cli, store_tiny, write_data

llama_cpp = pytest.importorskip("llama_cpp")

IDS = [2, 270, 267, 274, 274, 277, 307, 290, 296, 312, 291, 10, 40, 80, 120, 160, 200, 240, 7]


def _hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _llama(path: Path, **kw):
    from cuvee.native import captured_stderr

    with captured_stderr():
        return llama_cpp.Llama(
            model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=1, **kw
        )


def _gguf_logits(path: Path, ids: list[int], **kw) -> np.ndarray:
    llm = _llama(path, **kw)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def _export(settings, store, name, fmt, **kw) -> dict:
    return export(settings, store, name, fmt, reporter=SilentReporter(), **kw)


@pytest.fixture
def gemma(tiny_spm_gemma_dir: Path):
    settings, store = store_tiny(tiny_spm_gemma_dir, name="tg")
    return settings, store


@pytest.mark.parametrize("fixture", ["tiny_spm_gemma_dir", "tiny_llama_dir"])
def test_gguf_f32_logits_match_hugging_face(request, fixture: str) -> None:
    """Gemma 3 (sliding-window and global layers, a sequence longer than the window, Gemma's
    norm offset) and Llama (rotary row order) compute in llama.cpp what they compute in HF."""
    model_dir = request.getfixturevalue(fixture)
    settings, store = store_tiny(model_dir, name="m")
    entry = _export(settings, store, "m", "gguf", quant="f32")
    ours = _gguf_logits(Path(entry["path"]), IDS)
    ref = _hf_logits(model_dir, IDS)
    assert np.abs(ours - ref).max() < 5e-3 * max(1.0, np.abs(ref).max())
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_q8_0_greedy_tokens_equal_hugging_face(gemma, tiny_spm_gemma_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    settings, store = gemma
    entry = _export(settings, store, "tg", "gguf", quant="q8_0")
    assert entry["quantization"] == "q8_0" and entry["fidelity"]["top1_agreement"] > 0
    prompt = IDS[:8]
    model = AutoModelForCausalLM.from_pretrained(tiny_spm_gemma_dir, dtype=torch.float32)
    with torch.no_grad():
        hf = model.generate(
            torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None
        )[0, len(prompt) :].tolist()
    llm = _llama(Path(entry["path"]))
    ours = []
    llm.eval(prompt)
    for _ in range(8):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        ours.append(token)
        llm.eval([token])
    assert ours == hf


def test_the_embedded_template_and_tokens_are_the_training_ones(gemma, tiny_spm_gemma_dir) -> None:
    """llama-cpp-python's chat formatter, fed the GGUF's own template, renders exactly the
    prompt training used; llama.cpp tokenizes it exactly as the HF tokenizer did."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from tokenizers import Tokenizer

    settings, store = gemma
    entry = _export(settings, store, "tg", "gguf", quant="f16")
    llm = _llama(Path(entry["path"]))
    embedded = llm.metadata["tokenizer.chat_template"]
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "hello world, the question?"},
        {"role": "assistant", "content": "the answer."},
        {"role": "user", "content": "a model?"},
    ]
    template = get_template("gemma")
    expected = template.render(messages, add_generation_prompt=True, bos_token="<bos>")
    formatted = Jinja2ChatFormatter(embedded, eos_token="<eos>", bos_token="<bos>")(
        messages=messages
    )
    assert formatted.prompt == expected
    hf_ids = Tokenizer.from_file(str(tiny_spm_gemma_dir / "tokenizer.json")).encode(
        expected, add_special_tokens=False
    )
    assert llm.tokenize(expected.encode(), add_bos=False, special=True) == hf_ids.ids
    eot = llm.metadata["tokenizer.ggml.eot_token_id"]
    assert llm.detokenize([int(eot)], special=True) == template.end_of_turn.encode()


@pytest.fixture
def tuned(gemma, tmp_path: Path):
    """A LoRA fine-tune of the tiny model (turn-token rows too, as cuvee trains by default)."""
    from cuvee.train.loop import train
    from cuvee.train.recipe import Recipe

    settings, store = gemma
    data = write_data(tmp_path / "d.jsonl", licence="CC-BY-4.0")

    def run(name: str, **kw):
        recipe = Recipe(
            base="tg",
            data=[str(data)],
            name=name,
            seq_len=48,
            batch_size=4,
            lr=0.05,
            max_steps=3,
            eval_split="none",
            precision="fp32",
            **kw,
        )
        train(settings, recipe)
        return name

    return settings, store, run


def test_merged_lora_is_base_plus_adapter_and_exports_exactly(tuned, tiny_spm_gemma_dir) -> None:
    from safetensors.torch import load_file

    from cuvee.model_loading import load_causal_lm

    settings, store, run = tuned
    run("ft")
    stored = store.get("ft")
    merged = load_causal_lm(store, stored, dtype=torch.float32).state_dict()
    base = load_causal_lm(store, store.get("tg"), dtype=torch.float32).state_dict()
    adapter = load_file(str(stored.path / "adapter" / "adapter_model.safetensors"))
    config = json.loads((stored.path / "adapter" / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    a, b = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
    name = "model.layers.0.self_attn.q_proj.weight"
    assert (b.abs().sum() > 0) and torch.allclose(
        merged[name], base[name] + scale * b @ a, atol=1e-6
    )
    entry = _export(settings, store, "ft", "gguf", quant="f32")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_spm_gemma_dir, dtype=torch.float32)
    model.load_state_dict(merged)
    with torch.no_grad():
        ref = model(torch.tensor([IDS])).logits[0].numpy()
    ours = _gguf_logits(Path(entry["path"]), IDS)
    assert np.abs(ours - ref).max() < 5e-3 * max(1.0, np.abs(ref).max())


def test_hf_export_is_bf16_by_default_and_loads_in_transformers_and_peft(tuned) -> None:
    """bf16 (what vLLM and TGI then run: their default dtype is the config's) at half the f32
    export's size, within bf16 rounding of it; --adapter-only's PEFT weights in bf16 too."""
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    def dtypes(path: Path) -> set[str]:
        with safe_open(str(path), framework="pt") as f:
            return {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118

    settings, store, run = tuned
    run("ft")
    half = _export(settings, store, "ft", "hf")
    full = _export(settings, store, "ft", "hf", quant="f32")
    assert half["quantization"] == "bf16" and half["path"].endswith("ft-bf16-hf")
    assert dtypes(Path(half["path"]) / "model.safetensors") == {"BF16"}
    assert dtypes(Path(full["path"]) / "model.safetensors") == {"F32"}
    assert json.loads((Path(half["path"]) / "config.json").read_text())["dtype"] == "bfloat16"
    assert half["size"] < 0.6 * full["size"]
    ids = torch.tensor([IDS])
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(full["path"]).eval()(ids).logits
        model = AutoModelForCausalLM.from_pretrained(half["path"], dtype=torch.float32).eval()
        ours = model(ids).logits
    assert ours.argmax(-1).eq(ref.argmax(-1)).float().mean() >= 0.9
    assert (ours - ref).abs().max() < 0.05 * max(1.0, ref.abs().max().item())
    lora = _export(settings, store, "ft", "hf", adapter_only=True)
    assert dtypes(Path(lora["path"]) / "adapter_model.safetensors") == {"BF16"}
    base = AutoModelForCausalLM.from_pretrained(store.get("tg").path, dtype=torch.float32)
    with torch.no_grad():
        tuned_logits = PeftModel.from_pretrained(base, lora["path"]).eval()(ids).logits
    assert (tuned_logits - ref).abs().max() < 0.05 * max(1.0, ref.abs().max().item())


def test_adapter_only_gguf_applies_over_the_base_gguf(tuned) -> None:
    from cuvee.model_loading import load_causal_lm

    settings, store, run = tuned
    run("plain-lora", train_turn_tokens=False)
    base = _export(settings, store, "tg", "gguf", quant="f32")
    lora = _export(settings, store, "plain-lora", "gguf", adapter_only=True)
    assert lora["adapter_only"] and lora["path"].endswith("-lora.gguf")
    merged = load_causal_lm(store, store.get("plain-lora"), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = merged(torch.tensor([IDS])).logits[0].numpy()
    ours = _gguf_logits(Path(base["path"]), IDS, lora_path=lora["path"])
    assert np.abs(ours - ref).max() < 5e-3 * max(1.0, np.abs(ref).max())
    # the turn-token rows cannot travel in a llama.cpp LoRA file: refused, nothing written
    run("turn-lora")
    with pytest.raises(ConfigError, match="turn tokens"):
        _export(settings, store, "turn-lora", "gguf", adapter_only=True)
    assert not list((settings.home / "exports" / "turn-lora").glob("*.gguf"))


def test_onnx_export_runs_in_onnxruntime_with_hf_greedy_tokens(gemma, tiny_spm_gemma_dir) -> None:
    ort = pytest.importorskip("onnxruntime")
    from transformers import AutoModelForCausalLM

    settings, store = gemma
    entry = _export(settings, store, "tg", "onnx")
    out = Path(entry["path"])
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    model = AutoModelForCausalLM.from_pretrained(tiny_spm_gemma_dir, dtype=torch.float32)
    prompt = IDS[:6]
    with torch.no_grad():
        hf = model.generate(
            torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=None
        )[0].tolist()
    ids = list(prompt)
    for _ in range(6):
        feed = {"input_ids": np.array([ids], dtype=np.int64)}
        logits = session.run(["logits"], feed)[0]
        ids.append(int(logits[0, -1].argmax()))
    assert ids == hf
    with torch.no_grad():
        ref = model(torch.tensor([IDS])).logits[0].numpy()
    feed = {"input_ids": np.array([IDS], dtype=np.int64)}
    assert np.abs(session.run(["logits"], feed)[0][0] - ref).max() < 1e-3


def test_modelfile_template_and_stops_follow_the_chat_template(gemma) -> None:
    settings, store = gemma
    entry = _export(settings, store, "tg", "modelfile", quant="f16")
    out = Path(entry["path"])
    text = (out / "Modelfile").read_text()
    gguf_files = list(out.glob("*.gguf"))
    assert len(gguf_files) == 1 and f"FROM ./{gguf_files[0].name}" in text
    template = get_template("gemma")
    assert f'TEMPLATE """{template.ollama}"""' in text
    assert 'PARAMETER stop "<end_of_turn>"' in text
    assert all(s in template.ollama for s in ("<start_of_turn>user\n", "<start_of_turn>model\n"))


def test_every_export_is_recorded_with_its_digest(gemma) -> None:
    from cuvee.store import sha256_file

    settings, store = gemma
    entry = _export(settings, store, "tg", "gguf", quant="f16")
    path = Path(entry["path"])
    assert path.parent == settings.home / "exports" / "tg"
    (recorded,) = [e for e in store.get("tg").manifest.exports if e["path"] == str(path)]
    assert recorded["sha256"] == sha256_file(path) and recorded["size"] == path.stat().st_size
    assert recorded["format"] == "gguf" and recorded["quantization"] == "f16"
    hf = _export(settings, store, "tg", "hf")
    assert "model.safetensors" in hf["files"]
    assert len(store.get("tg").manifest.exports) == 2


def test_bad_input_is_named_and_writes_nothing(gemma, tiny_gemma_dir, tmp_path: Path) -> None:
    settings, store = gemma
    store_tiny(tiny_gemma_dir, name="wordlevel")
    with pytest.raises(ModelFileError, match=r"query_pre_attn_scalar|tokenizer"):
        _export(settings, store, "wordlevel", "gguf")
    assert not any((settings.home / "exports" / "wordlevel").iterdir())
    assert store.get("wordlevel").manifest.exports == []
    out = tmp_path / "x.gguf"
    out.write_text("keep me")
    with pytest.raises(ConfigError, match="already exists"):
        _export(settings, store, "tg", "gguf", out=out)
    assert out.read_text() == "keep me"
    with pytest.raises(ConfigError, match="does not apply"):
        _export(settings, store, "tg", "onnx", quant="q8_0")
    with pytest.raises(ConfigError, match="no LoRA adapter"):
        _export(settings, store, "tg", "gguf", adapter_only=True)


def test_cli_export_json(gemma, capsys) -> None:
    code, out, err = run_cli(capsys, "export", "tg", "--format", "gguf", "--json")
    assert code == 0, err
    entry = json.loads(out)
    assert entry["format"] == "gguf" and Path(entry["path"]).is_file()
    code, out, _ = run_cli(capsys, "models", "show", "tg")
    assert code == 0 and "exports:" in out and "gguf f16" in out and entry["path"] in out
    code, out, err = run_cli(capsys, "export", "nope", "--format", "gguf")
    assert code != 0 and "nope" in err


def test_a_tokenizer_llama_cpp_cannot_run_is_refused_by_name(tiny_gemma_dir: Path) -> None:
    from cuvee.export.vocab import read_vocab

    with pytest.raises(ModelFileError, match="SentencePiece-style") as err:
        read_vocab(tiny_gemma_dir, 64)
    assert "tokenizer.json" in str(err.value)


@pytest.mark.parametrize("family", ["gemma", "chatml"])
def test_the_ollama_template_renders_what_the_jinja_template_renders(family: str) -> None:
    """Ollama adds BOS itself, so the Go form is the Jinja form without the BOS token."""
    from gotemplate import render

    template = get_template(family)
    conversations = [
        [{"role": "user", "content": "hello"}],
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "the question?"},
            {"role": "assistant", "content": "the answer."},
            {"role": "user", "content": "and then?"},
        ],
    ]
    for messages in conversations:
        expected = template.render(messages, add_generation_prompt=True, bos_token="")
        assert render(template.ollama, messages) == expected
    # the evaluator is not lenient: a template that differs renders differently
    broken = template.ollama.replace("\n{{", "{{", 1)
    assert render(broken, conversations[1]) != template.render(
        conversations[1], add_generation_prompt=True, bos_token=""
    )
