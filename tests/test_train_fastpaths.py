"""The CPU fast paths of training compute what the plain paths compute: the cheap LoRA dropout,
the lean LoRA forward and eager attention over packed rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cuvee.train.dropout import FastDropout, replace_dropout
from cuvee.train.lora_forward import lean_lora_forward


def test_fast_dropout_drops_at_the_rate_asked_and_rescales_the_rest() -> None:
    torch.manual_seed(0)
    drop = FastDropout(0.1)
    x = torch.ones(1_000_001)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.9))
    # The halves of each 32-bit draw are both used: neither half is biased.
    assert abs((y[0::2] == 0).float().mean().item() - 0.1) < 0.003
    assert abs((y[1::2] == 0).float().mean().item() - 0.1) < 0.003
    drop.eval()
    assert drop(x) is x and drop.keep_scale == 1.0
    assert FastDropout(0.0)(x) is x


def _lora_model(directory: Path, dropout: float):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # peft starts B at zero, which would hide a wrong adapter path
    replace_dropout(model)
    model.train()
    return model


def _loss_and_grads(model, ids: torch.Tensor, seed: int):
    torch.manual_seed(seed)
    ids_embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    logits = model(inputs_embeds=ids_embeds, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return logits.detach(), grads, ids_embeds.grad


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_lean_lora_forward_matches_peft(tiny_gemma_dir: Path, dropout: float) -> None:
    model = _lora_model(tiny_gemma_dir, dropout)
    ids = torch.randint(3, 64, (2, 12))
    ref_logits, ref_grads, ref_input = _loss_and_grads(model, ids, seed=5)
    assert lean_lora_forward(model) == 14  # 7 targets x 2 layers
    assert lean_lora_forward(model) == 0  # not wrapped twice
    logits, grads, input_grad = _loss_and_grads(model, ids, seed=5)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(input_grad, ref_input, rtol=1e-4, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and len(grads) == 28
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_lean_lora_forward_leaves_disabled_adapters_to_peft(tiny_gemma_dir: Path) -> None:
    model = _lora_model(tiny_gemma_dir, 0.0)
    ids = torch.randint(3, 64, (1, 8))
    with model.disable_adapter(), torch.no_grad():
        base = model(input_ids=ids, use_cache=False).logits
    lean_lora_forward(model)
    with torch.no_grad():
        adapted = model(input_ids=ids, use_cache=False).logits
        with model.disable_adapter():
            again = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(again, base)
    assert not torch.allclose(adapted, base)


@pytest.mark.parametrize("attention", ["eager", "compiled"])
@pytest.mark.parametrize("family", ["gemma", "llama"])
def test_eager_attention_gives_the_sdpa_loss_and_gradients_on_packed_rows(
    family: str, attention: str, tiny_gemma_dir: Path, tiny_llama_dir: Path
) -> None:
    """Training on a CPU switches to transformers' eager attention, compiled when kernels are:
    on packed rows (examples longer than the tiny Gemma's 16-token sliding window included)
    either gives the loss and gradients of the sdpa attention the model loads with."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cuvee.train.encode import IGNORE, Example
    from cuvee.train.packing import pack
    from cuvee.train.sft import SFTLoss
    from cuvee.train.surgery import causal_lm

    directory = tiny_gemma_dir if family == "gemma" else tiny_llama_dir
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    gen = torch.Generator().manual_seed(1)

    def example(n: int) -> Example:
        ids = torch.randint(3, 60, (n,), generator=gen).tolist()
        return Example(ids, [IGNORE] * (n // 3) + ids[n // 3 + 1 :] + [IGNORE])

    rows = pack([example(n) for n in (20, 7, 12, 30, 3, 25)], 40, 0)
    assert any(len(set(r.position_ids)) < len(r.position_ids) for r in rows)  # some packed
    batch = {
        "input_ids": torch.tensor([r.input_ids for r in rows]),
        "position_ids": torch.tensor([r.position_ids for r in rows]),
        "labels": torch.tensor([r.labels for r in rows]),
    }

    def run():
        loss = SFTLoss(model, torch.float32)(**batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad()
        return loss.detach(), grads

    ref_loss, ref_grads = run()
    if attention == "eager":
        causal_lm(model).set_attn_implementation("eager")
    else:
        from cuvee.train.kernels import Kernels

        assert Kernels().compile_attention(causal_lm(model))
    loss, grads = run()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_cpu_training_builds_the_model_with_the_fast_paths(
    tiny_gemma_dir: Path, tmp_path: Path
) -> None:
    from cuvee.train.data import prepare
    from cuvee.train.recipe import Recipe
    from cuvee.train.surgery import build_model
    from helpers import store_tiny, write_data

    _, store = store_tiny(tiny_gemma_dir)
    data = write_data(tmp_path / "d.jsonl", 6)
    recipe = Recipe(
        base="tiny", data=[str(data)], name="x", seq_len=32, lora_dropout=0.1, eval_split="none"
    )
    model = build_model(store, prepare(store, recipe), "fp32", torch.device("cpu"))
    assert model.config._attn_implementation == "eager"
    lora = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert lora and all(hasattr(m, "_peft_forward") for m in lora)
    assert all(isinstance(m.lora_dropout["default"], FastDropout) for m in lora)


# ---------------------------------------------------------------------------- compiled kernels


def test_hashed_dropout_compiled_matches_eager_and_drops_at_the_rate_asked() -> None:
    from cuvee.train.kernels import Kernels, hashed_zero_dropped

    kernels = Kernels()
    threshold = round(0.1 * 32768)
    x = torch.randn(300, 640, requires_grad=True)
    torch.manual_seed(3)
    y = kernels.zero_dropped(x, threshold)
    torch.manual_seed(3)
    seed = torch.randint(0, 2**31 - 1, (), dtype=torch.int32)
    assert torch.equal(y, hashed_zero_dropped(x.detach(), seed, threshold))
    assert abs((y == 0).float().mean().item() - 0.1) < 0.005
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad == 0, y == 0)  # dropped elements get no gradient
    # Another draw of the seed gives another, unrelated mask; rows of other lengths compile
    # to the same loop (rows are dynamic).
    z = kernels.zero_dropped(torch.randn(77, 640), threshold)
    agree = ((z[:77] == 0) == (y[:77].detach() == 0)).float().mean().item()
    assert agree < 0.9


def test_compiled_norms_compute_what_the_model_computes(tiny_gemma_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from cuvee.train.kernels import Kernels

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_()
    ids = torch.randint(3, 64, (2, 10))
    ref = model(input_ids=ids, use_cache=False).logits
    ref.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    assert Kernels().compile_norms(model) == 2 * 4 + 2 * 2 + 1  # 4 + q/k per layer, final
    out = model(input_ids=ids, use_cache=False).logits
    out.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], rtol=1e-4, atol=1e-4)


def test_training_with_compiled_kernels_resumes_exactly(
    tiny_gemma_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cuvee.config import load_settings
    from cuvee.store import ModelStore
    from cuvee.train.loop import Interrupted, find_run, train
    from cuvee.train.recipe import Recipe
    from helpers import store_tiny, write_data

    monkeypatch.setenv("CUVEE_TRAIN_COMPILE", "on")
    store_tiny(tiny_gemma_dir)
    settings = load_settings()
    data = write_data(tmp_path / "d.jsonl", 30)

    def recipe(name: str) -> Recipe:
        return Recipe(
            base="tiny",
            data=[str(data)],
            name=name,
            seq_len=32,
            batch_size=2,
            max_steps=4,
            lora_dropout=0.1,
            eval_split="none",
            save_every=2,
        )

    whole = train(settings, recipe("tuned"))
    assert whole.summary["hardware"]["kernels"] == "compiled"
    ModelStore(settings.models_dir).remove("tuned")
    with pytest.raises(Interrupted):
        train(settings, recipe("tuned"), stop_after_step=2)
    resumed = train(settings, recipe("tuned"), resume_dir=find_run(settings, "tuned"))
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5, abs=1e-6)


def test_a_kernel_that_fails_to_compile_falls_back_to_its_original_once() -> None:
    import warnings

    from cuvee.train.kernels import Guarded

    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    kernel = Guarded(double)

    def no_compiler(*args, **kwargs):
        raise torch._dynamo.exc.InternalTorchDynamoError("no C++ compiler")

    kernel.compiled = no_compiler
    with pytest.warns(RuntimeWarning, match=r"compiling \S*double failed \(no C\+\+ compiler\)"):
        out = kernel(torch.ones(3))
    assert torch.equal(out, torch.full((3,), 2.0)) and kernel.compiled is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert torch.equal(kernel(torch.ones(2)), torch.full((2,), 2.0))

    other = Guarded(double)

    def user_error(*args, **kwargs):
        raise ValueError("shapes do not match")

    other.compiled = user_error
    with pytest.raises(ValueError, match="shapes"):
        other(torch.ones(3))


def test_the_held_out_pass_runs_the_kernels_uncompiled(tiny_gemma_dir: Path) -> None:
    """Its no-grad shapes would otherwise use up the compiled variants torch keeps per
    function, leaving the training steps' shapes to run uncompiled."""
    from contextlib import nullcontext

    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM

    from cuvee.train.encode import IGNORE, Example
    from cuvee.train.kernels import Kernels
    from cuvee.train.packing import pack
    from cuvee.train.sft import SFTLoss, evaluate

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir)
    kernels = Kernels()
    assert kernels.compile_norms(model)
    rows = pack(
        [Example(list(range(3, 3 + n)), [IGNORE, *range(4, 3 + n)]) for n in (9, 14, 5)],
        20,
        0,
    )
    before = counters["stats"]["unique_graphs"]
    loss = evaluate(SFTLoss(model, torch.float32), rows, 2, torch.device("cpu"), nullcontext)
    assert loss is not None and loss > 0
    assert counters["stats"]["unique_graphs"] == before
