"""Model surgery: what is done to the stored base before the first step.

The base is loaded in the dtype the run needs, LoRA adapters are put on the recipe's target
modules (the base frozen) or the whole model is trained, peft's trainable turn-token rows are
made cheap to look up, and on the CPU the adapters' dropout and forward, the norms and the
attention are replaced by faster equivalents (see dropout.py, lora_forward.py, kernels.py).
``causal_lm`` finds the transformers model inside the wrappers, for the loop and for the
parallel strategies alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cuvee.errors import ConfigError
from cuvee.model_loading import load_causal_lm
from cuvee.store import ModelStore
from cuvee.train.kernels import Kernels
from cuvee.train.recipe import Recipe
from cuvee.train.throughput import bf16_supported

if TYPE_CHECKING:
    from cuvee.train.data import Prepared


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers causal LM inside peft and DDP wrappers."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return inner


def precision_for(recipe: Recipe, device_type: str) -> str:
    """The precision a run trains in: the recipe's, or for ``auto`` bf16 where the device has
    it natively and fp32 elsewhere."""
    if recipe.precision == "auto":
        return "bf16" if bf16_supported(device_type) else "fp32"
    return recipe.precision


def build_model(
    store: ModelStore,
    prepared: Prepared,
    precision: str,
    device: torch.device,
    kernels: Kernels | None = None,
):
    """The base with LoRA adapters (base frozen, stored in bf16 when training in bf16), or the
    whole model in fp32 for full fine-tuning (master weights stay fp32; autocast runs bf16)."""
    recipe = prepared.recipe
    lora = recipe.adapter == "lora"
    dtype = torch.bfloat16 if (lora and precision == "bf16") else torch.float32
    model = load_causal_lm(store, prepared.base, dtype=dtype)
    model.config.use_cache = False
    if device.type == "cpu" and model.config._attn_implementation == "sdpa":
        # torch's CPU attention kernel computes every block of a packed row's block-diagonal
        # mask and is slow in the backward pass; plain matrix products are about twice as fast
        # for these short rows (5% of a gemma3-270m step here). The same function: tested.
        model.set_attn_implementation("eager")
    if lora:
        from peft import LoraConfig, get_peft_model

        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in recipe.lora_targets if t not in present]
        if missing:
            raise ConfigError(
                f"lora_targets {missing} are not modules of {recipe.base}",
                hint="linear layers here: "
                + ", ".join(sorted(n for n in present if n.endswith("proj"))),
            )
        config = LoraConfig(
            r=recipe.lora_r,
            lora_alpha=recipe.lora_alpha,
            lora_dropout=recipe.lora_dropout,
            target_modules=list(recipe.lora_targets),
            task_type="CAUSAL_LM",
            trainable_token_indices=(
                prepared.turn_token_ids
                if recipe.train_turn_tokens and prepared.turn_token_ids
                else None
            ),
        )
        model = get_peft_model(model, config)
        sparse_token_rows(model)
        if device.type == "cpu":
            from cuvee.train.dropout import replace_dropout
            from cuvee.train.lora_forward import lean_lora_forward

            replace_dropout(model, kernels)
            lean_lora_forward(model)
            if kernels is not None:
                kernels.compile_norms(model)
                kernels.compile_attention(causal_lm(model))
        if precision == "bf16":
            # peft casts each adapter's input up to the adapters' fp32 and autocast casts it
            # back down for the matmul: two copies of every activation, per adapted layer.
            # Autocast alone already runs the adapter matmuls in bf16.
            for module in model.modules():
                if hasattr(module, "cast_input_dtype_enabled"):
                    module.cast_input_dtype_enabled = False
    if recipe.gradient_checkpointing:
        # Non-reentrant: needs no gradient on the inputs, and restores the RNG state (dropout
        # draws the same mask when a layer is computed again).
        lm = causal_lm(model)
        enable = getattr(lm, "activation_checkpointing_enable", None)  # transformers >= 5.2x
        (enable or lm.gradient_checkpointing_enable)({"use_reentrant": False})
    return model.to(device)


def sparse_token_rows(model: torch.nn.Module) -> bool:
    """Make peft's trainable token rows cheap on the input side.

    peft looks embeddings up in a merged copy of the whole table, whose gradient is then a
    dense vocabulary-sized matrix each step (262k x 640 here), to keep two rows. This looks up
    the frozen table and splices the trained rows in where those tokens occur: the same values
    and gradients, at the cost of the rows actually used. Returns whether a layer was changed."""
    import types

    embed = _token_layer(causal_lm(model).get_input_embeddings())
    if embed is None or not embed.trainable_tokens_delta:
        return False
    deltas = embed.trainable_tokens_delta
    name = next(iter(deltas))
    base = embed.base_layer
    index = embed.token_indices[name]
    tables: dict[torch.device, torch.Tensor] = {}

    def slots(device: torch.device) -> torch.Tensor:
        # token id -> its row in the delta, -1 for other tokens; made on the device the ids are
        # on (the model is moved to the GPU after this patch).
        if device not in tables:
            table = torch.full((base.weight.shape[0],), -1, dtype=torch.long, device=device)
            table[torch.tensor(index, device=device)] = torch.arange(len(index), device=device)
            tables[device] = table
        return tables[device]

    def forward(self, input_ids, *args, **kwargs):
        out = base(input_ids)
        if self.disable_adapters:  # the parent model, as preference tuning's reference
            return out
        slot_of = slots(input_ids.device)
        hit = slot_of[input_ids] >= 0
        rows = self.trainable_tokens_delta[name][slot_of[input_ids[hit]]]
        scale = self._get_embed_scale()
        if scale is not None:
            rows = rows * scale.to(rows.dtype)
        return out.index_put((hit,), rows.to(out.dtype))

    embed.forward = types.MethodType(forward, embed)
    return True


def head_weights(head: torch.nn.Module):
    """The output head's frozen weight, and the rows peft's trainable tokens replace in it (None
    when there are none): the loss splices them in without a vocabulary-sized gradient."""
    layer = _token_layer(head)
    if layer is None:
        return head.weight, None, None
    base = layer.base_layer.weight
    source = layer.tied_adapter or layer
    deltas = source.trainable_tokens_delta
    active = [a for a in layer.active_adapters if a in deltas]
    if not active or layer.merged or layer.disable_adapters:
        return base, None, None
    index = torch.tensor(source.token_indices[active[0]], device=base.device)
    return base, index, deltas[active[0]]


def embedding_dtype(lm: torch.nn.Module) -> torch.dtype:
    """The input embedding's dtype, read from its frozen table: with peft's trainable tokens,
    ``.weight`` is a property that builds a merged copy of the whole table (320 MB here)."""
    embed = lm.get_input_embeddings()
    layer = _token_layer(embed)
    return (layer.base_layer if layer is not None else embed).weight.dtype


def _token_layer(module: torch.nn.Module):
    """peft's TrainableTokensLayer in (or behind the wrapper of) an embedding or head."""
    layer = getattr(module, "token_adapter", module)
    return layer if hasattr(layer, "trainable_tokens_delta") else None
