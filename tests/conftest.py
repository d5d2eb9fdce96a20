"""Shared fixtures: an isolated CUVEE_HOME and tiny random models built from a config, so tests
run in seconds without the network or the real base model."""

from __future__ import annotations

from pathlib import Path

import pytest

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


# What `make test` (CUVEE_REQUIRE_CORE=1) refuses to run without: a broken build of one of these
# would otherwise turn dozens of tests into quiet skips and the run green.
CORE_MODULES = ("llama_cpp", "torch", "transformers", "peft", "fastapi", "gguf", "onnxruntime")


def pytest_sessionstart(session: pytest.Session) -> None:
    import importlib
    import os

    if os.environ.get("CUVEE_REQUIRE_CORE") != "1":
        return
    broken = []
    for name in CORE_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an ImportError, or a native library that fails to load
            broken.append(f"{name}: {exc!r}")
    if broken:
        pytest.exit("core dependencies do not import:\n  " + "\n  ".join(broken), returncode=3)


@pytest.fixture(scope="session")
def machine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CUVEE_CACHE for the whole run: the engine probe runs once, not once per test."""
    return tmp_path_factory.mktemp("cuvee-cache")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine_cache: Path) -> Path:
    """Every test gets its own CUVEE_HOME; nothing touches the user's ~/.cuvee or ~/.cache."""
    home = tmp_path / "cuvee-home"
    monkeypatch.setenv("CUVEE_HOME", str(home))
    monkeypatch.setenv("CUVEE_CACHE", str(machine_cache))
    monkeypatch.delenv("CUVEE_ENGINE_REPACK", raising=False)
    monkeypatch.delenv("CUVEE_CONFIG", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Compiling kernels costs seconds per model shape; the tests that need it turn it on.
    monkeypatch.setenv("CUVEE_TRAIN_COMPILE", "off")
    return home


def build_tiny_tokenizer(directory: Path) -> None:
    """A word-level tokenizer with Gemma's special tokens, saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["the", "a", "of", "to", "and", "is", "in", "it", "you", "that", "hello", "world"]
    words += ["answer", "question", "model", "user"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    fast.save_pretrained(directory)


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Gemma 3 text model saved as a Hugging Face directory (safetensors)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    directory = tmp_path_factory.mktemp("tiny-gemma")
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=128,
        sliding_window=16,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    Gemma3ForCausalLM(config).save_pretrained(directory)
    build_tiny_tokenizer(directory)
    return directory


def build_tiny_spm_tokenizer(directory: Path) -> int:
    """A small SentencePiece-style BPE tokenizer (byte fallback, "▁" for spaces, Gemma's special
    tokens), the kind llama.cpp runs, saved as tokenizer.json. Returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    tokens = list(SPECIAL_TOKENS) + [f"<0x{b:02X}>" for b in range(256)]
    chars = list("▁abcdefghijklmnopqrstuvwxyz.,?!\n")
    tokens += chars
    merges = []
    for word in ["▁the", "▁a", "▁hello", "▁world", "▁answer", "▁question", "model", "user"]:
        piece = word[0]
        for ch in word[1:]:
            if piece + ch not in tokens:
                tokens.append(piece + ch)
                merges.append((piece, ch))
            piece += ch
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    fast.save_pretrained(directory)
    return len(tokens)


def build_tiny_spm_gemma(directory: Path, head_dim: int = 32) -> Path:
    """A 6-layer random Gemma 3 (five sliding-window layers, then a global one, as llama.cpp's
    gemma3 expects) with a tokenizer llama.cpp can run, saved in ``directory``."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    vocab_size = build_tiny_spm_tokenizer(directory)
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        max_position_embeddings=256,
        sliding_window=8,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():  # random norms, so a wrong norm offset cannot go unnoticed
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.5)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_spm_gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Gemma 3 that GGUF export is tested on (head_dim 32)."""
    return build_tiny_spm_gemma(tmp_path_factory.mktemp("tiny-spm-gemma"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with the same small SentencePiece-style tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny-llama")
    vocab_size = build_tiny_spm_tokenizer(directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory
