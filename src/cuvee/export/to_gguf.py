"""A Hugging Face causal LM (a directory or an in-memory model) written as a GGUF file.

Each supported architecture is an entry in ARCHITECTURES: its llama.cpp name, the
hyper-parameters llama.cpp reads, and how its tensors differ from Hugging Face's layout. Tensor
names are mapped with the gguf package's own table. The vocabulary, the special tokens and the
model family's chat template (``tokenizer.chat_template``) are written too, so llama.cpp formats
prompts and stops exactly as the model was trained."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cuvee.chat_template import ChatTemplate
from cuvee.errors import ConfigError, ModelFileError
from cuvee.export.vocab import read_vocab

# Output types written directly; the k-quants come from llama.cpp's quantizer afterwards.
FLOAT_TYPES = ("f32", "f16")


def _rope_theta(config: dict, layer_type: str | None = None) -> float:
    params = config.get("rope_parameters") or {}
    if layer_type and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    theta = params.get("rope_theta", config.get("rope_theta"))
    return float(theta if theta is not None else 10000.0)


def _check_rope(config: dict, layer_types: tuple[str | None, ...]) -> None:
    params = config.get("rope_parameters") or {}
    for layer_type in layer_types:
        p = params.get(layer_type, params) if layer_type else params
        kind = (p or {}).get("rope_type", "default") if isinstance(p, dict) else "default"
        if kind not in ("default", None):
            raise ModelFileError(
                f"rope scaling {kind!r} is not exported to GGUF yet",
                hint="models with plain rotary embeddings export; this one needs a converter "
                "that writes its scaling",
            )


def _common(w, config: dict, arch: str) -> None:
    w.add_context_length(int(config.get("max_position_embeddings", 2048)))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_block_count(int(config["num_hidden_layers"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(int(config["num_attention_heads"]))
    w.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))


def _head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _gemma3_hparams(w, config: dict) -> None:
    _common(w, config, "gemma3")
    head_dim = _head_dim(config)
    scalar = config.get("query_pre_attn_scalar", head_dim)
    if scalar != head_dim:
        raise ModelFileError(
            f"query_pre_attn_scalar {scalar} differs from head_dim {head_dim}: llama.cpp's "
            "gemma3 scales attention by head_dim, so the GGUF would compute something else"
        )
    for cap in ("final_logit_softcapping", "attn_logit_softcapping"):
        if config.get(cap):
            raise ModelFileError(f"{cap} is set; llama.cpp's gemma3 does not apply it")
    layer_types = config.get("layer_types") or []
    _check_rope(config, ("sliding_attention", "full_attention"))
    pattern = config.get("_sliding_window_pattern") or config.get("sliding_window_pattern") or 6
    expected = [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
        for i in range(int(config["num_hidden_layers"]))
    ]
    if layer_types and list(layer_types) != expected:
        raise ModelFileError(
            "the layers' sliding/full attention pattern is not every-6th-global as llama.cpp's "
            "gemma3 assumes"
        )
    if _rope_theta(config, "sliding_attention") != 10000.0:
        raise ModelFileError("llama.cpp's gemma3 uses rope base 10000 on sliding layers")
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(_rope_theta(config, "full_attention"))
    w.add_sliding_window(int(config.get("sliding_window") or 4096))


def _gemma_tensor(name: str, data: np.ndarray, config: dict) -> np.ndarray | None:
    if name == "lm_head.weight" and config.get("tie_word_embeddings", True):
        return None
    if name.endswith("norm.weight"):
        return data + 1  # Gemma's RMSNorm multiplies by (1 + w); llama.cpp by w
    return data


def _llama_hparams(w, config: dict) -> None:
    _common(w, config, "llama")
    _check_rope(config, (None,))
    head_dim = _head_dim(config)
    if head_dim * int(config["num_attention_heads"]) != int(config["hidden_size"]):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(_rope_theta(config))
    w.add_vocab_size(int(config["vocab_size"]))


def _unpermute_rotary(data: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's Llama q/k rows rotate halves of each head; llama.cpp's rotary embedding
    rotates adjacent pairs. Interleave the two halves of every head's rows."""
    rows = data.shape[0]
    return (
        data.reshape(heads, 2, rows // heads // 2, *data.shape[1:])
        .swapaxes(1, 2)
        .reshape(data.shape)
    )


def _llama_tensor(name: str, data: np.ndarray, config: dict) -> np.ndarray | None:
    if name == "lm_head.weight" and config.get("tie_word_embeddings", False):
        return None
    if name.endswith("self_attn.q_proj.weight"):
        return _unpermute_rotary(data, int(config["num_attention_heads"]))
    if name.endswith("self_attn.k_proj.weight"):
        heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
        return _unpermute_rotary(data, heads)
    if name.endswith("rotary_emb.inv_freq"):
        return None
    return data


@dataclass(frozen=True)
class Architecture:
    gguf_name: str
    hparams: Callable[[Any, dict], None]
    tensor: Callable[[str, np.ndarray, dict], np.ndarray | None]


ARCHITECTURES: dict[str, Architecture] = {
    "gemma3_text": Architecture("gemma3", _gemma3_hparams, _gemma_tensor),
    "llama": Architecture("llama", _llama_hparams, _llama_tensor),
}


def architecture_for(config: dict) -> Architecture:
    model_type = config.get("model_type", "?")
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ConfigError(
            f"GGUF export does not support the {model_type!r} architecture",
            hint=f"supported: {', '.join(sorted(ARCHITECTURES))}; --format hf or onnx work "
            "for any model transformers loads",
        ) from None


def write_gguf(
    out: Path,
    *,
    config: dict,
    tensors: Iterator[tuple[str, Any]],
    tokenizer_dir: Path,
    template: ChatTemplate,
    bos_token: str,
    eos_token: str,
    name: str,
    licence: str | None,
    out_type: str = "f16",
) -> None:
    """Write ``out`` from Hugging Face tensors (name, torch tensor or array) in one pass."""
    import gguf

    if out_type not in FLOAT_TYPES:
        raise ConfigError(f"GGUF output type {out_type!r} is not one of {', '.join(FLOAT_TYPES)}")
    arch = architecture_for(config)
    n_layers = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf_name.upper()], n_layers)
    writer = gguf.GGUFWriter(str(out), arch.gguf_name)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        if licence:
            writer.add_license(licence)
        arch.hparams(writer, config)
        writer.add_file_type(
            gguf.LlamaFileType.ALL_F32 if out_type == "f32" else gguf.LlamaFileType.MOSTLY_F16
        )
        _write_vocab(writer, config, tokenizer_dir, template, bos_token, eos_token)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        count = 0
        for hf_name, value in tensors:
            data = value.detach().float().cpu().numpy() if hasattr(value, "detach") else value
            data = arch.tensor(hf_name, np.asarray(data, dtype=np.float32), config)
            if data is None:
                continue
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ModelFileError(f"tensor {hf_name!r} has no GGUF name for {arch.gguf_name}")
            if out_type == "f16" and data.ndim > 1:
                data = data.astype(np.float16)
            writer.add_tensor(gguf_name, np.ascontiguousarray(data))
            count += 1
        if count == 0:
            raise ModelFileError("the model has no tensors to export")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _write_vocab(writer, config, tokenizer_dir, template, bos_token, eos_token) -> None:
    vocab = read_vocab(tokenizer_dir, int(config["vocab_size"]))
    if len(vocab.tokens) != int(config["vocab_size"]):
        raise ModelFileError(
            f"the tokenizer has {len(vocab.tokens)} tokens, the model's embedding "
            f"{config['vocab_size']}"
        )
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    for token, add in (
        (bos_token, writer.add_bos_token_id),
        (eos_token, writer.add_eos_token_id),
        ("<unk>", writer.add_unk_token_id),
        ("<pad>", writer.add_pad_token_id),
        (template.end_of_turn, writer.add_eot_token_id),
    ):
        i = vocab.id_of(token) if token else None
        if i is not None:
            add(i)
    writer.add_add_bos_token(bool(bos_token) and vocab.id_of(bos_token) is not None)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    writer.add_chat_template(template.jinja)
