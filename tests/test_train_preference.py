"""Preference tuning on a tiny model: the answers' log-probabilities with one prompt encoding,
each loss against its reference formula, the parent as the reference, and whole runs."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cuvee.train.answers import AnswerLogProbs
from cuvee.train.pairs import Unit, UnitRow, answer_batch
from cuvee.train.preference_loss import LOSSES
from cuvee.train.recipe import Recipe, build_recipe
from helpers import WORDS, run_cli, store_tiny, write_data

# ---------------------------------------------------------------------------- helpers


def _units(seed: int, n: int, prompt_len: int = 20) -> list[Unit]:
    """Units of random word tokens (ids 6-21 in the tiny vocabulary); prompts longer than the
    tiny model's sliding window (16), so both kinds of layer matter."""
    rng = random.Random(seed)

    def tokens(k: int) -> tuple[int, ...]:
        return tuple(rng.randint(6, 21) for _ in range(k))

    return [
        Unit(
            tokens(rng.randint(prompt_len - 4, prompt_len)),
            tokens(rng.randint(1, 9)),
            tokens(rng.randint(1, 9)),
            label=rng.random() < 0.5,
        )
        for _ in range(n)
    ]


def _plain_logprobs(model, units: list[Unit]) -> torch.Tensor:
    """Each answer encoded alone after its prompt, full logits, log_softmax: (units, 2)."""
    out = []
    for u in units:
        pair = []
        for answer in (u.first, u.second):
            ids = torch.tensor([[*u.prompt, *answer]])
            logits = model(input_ids=ids, use_cache=False).logits[0].float()
            logp = F.log_softmax(logits, -1)
            p = len(u.prompt)
            pair.append(sum(logp[p - 1 + j, t] for j, t in enumerate(answer)))
        out.append(torch.stack(pair))
    return torch.stack(out)


def _tiny_model(tiny_gemma_dir: Path, attention: str = "eager"):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_gemma_dir, attn_implementation=attention)


def _lora_with_tokens(model):
    """LoRA with trainable token rows, perturbed away from the base."""
    from peft import LoraConfig, get_peft_model

    from cuvee.train.surgery import sparse_token_rows

    config = LoraConfig(
        r=4, target_modules=["q_proj", "down_proj"], trainable_token_indices=[4, 5, 7]
    )
    config.lora_dropout = 0.0
    model = get_peft_model(model, config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "trainable_tokens_delta" in n:
                p.add_(torch.randn_like(p) * 0.5)
    sparse_token_rows(model)
    return model


# ------------------------------------------------------------ log-probabilities of answers


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("packing", [False, True])
def test_one_prompt_for_two_answers_equals_each_answer_alone(
    tiny_gemma_dir: Path, attention: str, packing: bool
) -> None:
    """[prompt | chosen | rejected] in one sequence (several units per row when packed) gives
    the log-probabilities, and the gradients, of each answer encoded alone with full logits."""
    model = _tiny_model(tiny_gemma_dir, attention)
    units = _units(0, 4)
    rows = (
        [UnitRow(tuple(units[:3])), UnitRow((units[3],))]
        if packing
        else [UnitRow((u,)) for u in units]
    )
    batch = answer_batch(rows, torch.device("cpu"))
    module = AnswerLogProbs(model, torch.float32)
    sums, counts = module.answer_logprobs(
        **{k: batch[k] for k in ("input_ids", "position_ids", "unit", "branch")},
        source=batch["source"],
        targets=batch["targets"],
        slot=batch["slot"],
        slots=2 * len(units),
    )
    weights = torch.randn(sums.shape)
    (sums * weights).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    order = [u for r in rows for u in r.units]
    plain = _plain_logprobs(model, order)
    (plain.flatten() * weights).sum().backward()
    torch.testing.assert_close(sums.view(-1, 2), plain.detach(), rtol=1e-5, atol=1e-5)
    assert counts.view(-1, 2).tolist() == [[len(u.first), len(u.second)] for u in order]
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_trainable_token_rows_get_the_gradient_of_the_full_forward(tiny_gemma_dir: Path) -> None:
    """With LoRA and trainable token rows spliced into a frozen head, the same gradients as
    peft's own forward over full logits."""
    model = _lora_with_tokens(_tiny_model(tiny_gemma_dir))
    units = _units(1, 3)
    rows = [UnitRow(tuple(units))]
    batch = answer_batch(rows, torch.device("cpu"))
    sums, _ = AnswerLogProbs(model, torch.float32).answer_logprobs(
        **{k: batch[k] for k in ("input_ids", "position_ids", "unit", "branch")},
        source=batch["source"],
        targets=batch["targets"],
        slot=batch["slot"],
        slots=6,
    )
    sums.sum().backward()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ours = {n: p.grad.clone() for n, p in trained}
    model.zero_grad()
    plain = _plain_logprobs(model, units)
    plain.sum().backward()
    torch.testing.assert_close(sums.view(-1, 2), plain.detach(), rtol=1e-5, atol=1e-5)
    assert any("trainable_tokens_delta" in n for n, _ in trained)
    for name, p in trained:
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)


# ----------------------------------------------------------------------------- the losses


def _reference_formula(name: str, pol, ref, tokens, labels, r: Recipe) -> torch.Tensor:
    """Each loss written out from its paper, per example, from plain log-probabilities."""
    beta = r.preference_beta
    pc, pr, rc, rr = pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1]
    nc, nr = tokens[:, 0], tokens[:, 1]
    if name == "sigmoid":
        return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))) - r.nll_weight * pc / nc
    if name == "ipo":
        return ((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2
    if name == "simpo":
        return -F.logsigmoid(beta * (pc / nc - pr / nr) - r.simpo_gamma)
    if name == "orpo":
        ac, ar = pc / nc, pr / nr
        odds_c = ac - torch.log(1 - torch.exp(ac))
        odds_r = ar - torch.log(1 - torch.exp(ar))
        return -ac - r.orpo_lambda * F.logsigmoid(odds_c - odds_r)
    assert name == "kto"
    z = max(0.0, float((pr - rr).mean()))
    good = torch.tensor(labels)
    return torch.where(
        good,
        r.kto_desirable_weight * (1 - torch.sigmoid(beta * ((pc - rc) - z))),
        r.kto_undesirable_weight * (1 - torch.sigmoid(beta * (z - (pc - rc)))),
    )


_RECIPES = {
    "sigmoid": dict(method="dpo", loss_type="sigmoid", beta=0.3, nll_weight=0.7),
    "ipo": dict(method="dpo", loss_type="ipo", beta=0.2),
    "simpo": dict(method="dpo", loss_type="simpo"),
    "orpo": dict(method="orpo", orpo_lambda=0.25),
    "kto": dict(method="kto", kto_desirable_weight=1.2, kto_undesirable_weight=0.9),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_equals_its_reference_formula(tiny_gemma_dir: Path, name: str) -> None:
    from dataclasses import replace

    from cuvee.train.preference import PreferenceLoss

    recipe = Recipe(**_RECIPES[name])
    model = _tiny_model(tiny_gemma_dir)
    units = _units(2, 5)
    gen = torch.Generator().manual_seed(3)
    reference = (torch.randn(5, 2, generator=gen) * 2 - 15).tolist()
    units = [replace(u, reference=tuple(r)) for u, r in zip(units, reference, strict=True)]
    batch = answer_batch([UnitRow(tuple(units))], torch.device("cpu"))
    loss, _stats = PreferenceLoss(model, torch.float32, recipe)(**batch)
    with torch.no_grad():
        plain = _plain_logprobs(model, units)
    tokens = torch.tensor([[len(u.first), len(u.second)] for u in units], dtype=torch.float32)
    labels = [bool(u.label) for u in units]
    expected = _reference_formula(
        name, plain, torch.tensor(reference), tokens, labels, recipe
    ).sum()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)


def test_beta_defaults_follow_the_papers() -> None:
    assert Recipe(method="dpo").preference_beta == 0.1
    assert Recipe(method="dpo", loss_type="simpo").preference_beta == 2.0
    assert Recipe(method="kto").preference_beta == 0.1
    assert Recipe(method="dpo", beta=0.5, loss_type="simpo").preference_beta == 0.5


def test_old_recipes_saying_method_lora_or_full_still_load(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("method: full\nlr: 0.001\n")
    old = build_recipe(path)
    assert (old.method, old.adapter) == ("sft", "full")
    # a flag for the new knob keeps the file's adapter
    dpo = build_recipe(path, {"method": "dpo"})
    assert (dpo.method, dpo.adapter) == ("dpo", "full")
    assert build_recipe(None, {"method": "lora"}).adapter == "lora"
    path.write_text("method: full\nadapter: lora\n")
    from cuvee.errors import ConfigError

    with pytest.raises(ConfigError, match="contradicts"):
        build_recipe(path)


# ---------------------------------------------------------------------------- whole runs


def write_pairs(path: Path, n: int = 24, seed: int = 0, licence: str | None = None) -> Path:
    """Pairs in the ShareGPT layout of LLaMA-Factory's dpo_en_demo.json."""
    rng = random.Random(seed)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    records = [
        {
            "conversations": [{"from": "human", "value": words(2, 8)}],
            "chosen": {"from": "gpt", "value": "hello " + words(1, 5)},
            "rejected": {"from": "gpt", "value": "world " + words(1, 5)},
        }
        for _ in range(n)
    ]
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    if licence:
        path.with_name(path.name + ".cuvee.yaml").write_text(f"licence: {licence}\n")
    return path


def write_kto(path: Path, n: int = 24, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
            a = ("hello " if i % 2 else "world ") + rng.choice(WORDS)
            messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            fh.write(json.dumps({"messages": messages, "label": bool(i % 2)}) + "\n")
    return path


def _recipe(data: Path, **kw) -> Recipe:
    base = dict(
        base="tiny",
        data=[str(data)],
        name="preferred",
        method="dpo",
        seq_len=48,
        batch_size=2,
        lr=0.01,
        max_steps=4,
        eval_every=2,
        save_every=100,
        precision="fp32",
        eval_split=0.2,
    )
    return Recipe(**{**base, **kw})


@pytest.fixture
def setup(tiny_gemma_dir: Path, tmp_path: Path):
    settings, store = store_tiny(tiny_gemma_dir)
    data = write_pairs(tmp_path / "pairs.json", licence="CC-BY-NC-4.0")
    return settings, store, data


def test_dpo_starts_at_ln2_with_zero_rewards_and_learns_the_preference(setup) -> None:
    from cuvee.train.loop import train

    settings, _store, data = setup
    seen: list[dict] = []
    result = train(
        settings,
        _recipe(data, max_steps=8, lora_dropout=0.0),
        on_step=lambda step, m: seen.append(m),
    )
    first = seen[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards_chosen"] == pytest.approx(0, abs=1e-6)
    assert first["rewards_rejected"] == pytest.approx(0, abs=1e-6)
    assert first["margin"] == pytest.approx(0, abs=1e-6) and first["drift"] == pytest.approx(0)
    pref = result.summary["preference"]
    assert pref["eval_before"]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert pref["eval"]["margin"] > 0 and pref["eval"]["loss"] < math.log(2)
    assert pref["reference"]["parent"] == "tiny"


def test_the_reference_is_cached_and_a_resumed_run_continues_exactly(
    setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cuvee.train import preference
    from cuvee.train.loop import Interrupted, find_run, train

    settings, store, data = setup
    recipe = _recipe(data, max_steps=5, lora_dropout=0.1)  # dropout: the RNG must carry over
    whole = train(settings, recipe)
    store.remove("preferred")
    with pytest.raises(Interrupted):
        train(settings, recipe, stop_after_step=2)
    run_dir = find_run(settings, "preferred")
    assert (run_dir / preference.REFERENCE).is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("the reference was computed again")

    monkeypatch.setattr(preference, "reference_logprobs", refuse)
    resumed = train(settings, recipe, resume_dir=run_dir)
    assert resumed.summary["resumed_at_step"] == 2
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5, abs=1e-6)
    assert resumed.summary["preference"]["reference"]["how"] == "read from the run's cache"


@pytest.mark.parametrize(
    ("knobs", "kto", "metric"),
    [
        (dict(method="dpo", loss_type="ipo"), False, "drift"),
        (dict(method="dpo", loss_type="simpo"), False, "margin"),
        (dict(method="orpo"), False, "nll"),
        (dict(method="kto"), True, "kl"),
        (dict(method="kto"), False, "rewards_desirable"),  # pairs split into two examples
        (dict(method="dpo", adapter="full", lr=0.001), False, "accuracy"),
    ],
)
def test_every_method_trains_and_logs_its_metrics(
    setup, tmp_path: Path, knobs: dict, kto: bool, metric: str
) -> None:
    from cuvee.train.loop import train

    settings, store, data = setup
    if kto:
        data = write_kto(tmp_path / "kto.jsonl")
    result = train(settings, _recipe(data, max_steps=2, **knobs))
    log = [json.loads(x) for x in (result.run_dir / "log.jsonl").read_text().splitlines()]
    steps = [x for x in log if "loss" in x]
    assert len(steps) == 2 and all(math.isfinite(x["loss"]) for x in steps)
    assert all(metric in x for x in steps), steps[0]
    assert f"eval_{metric}" in log[0]
    assert store.get("preferred").manifest.parent == "tiny"


def test_pairs_are_required_for_dpo(setup, tmp_path: Path) -> None:
    from cuvee.errors import DataError
    from cuvee.train.loop import train

    settings, store, _ = setup
    with pytest.raises(DataError, match="--method kto"):
        train(settings, _recipe(write_kto(tmp_path / "kto.jsonl")))
    assert store.names() == ["tiny"]


def test_cli_dpo_registers_a_model_whose_card_shows_the_preference_and_the_licence(
    setup, capsys
) -> None:
    _settings, store, data = setup
    args = ["train", "--base", "tiny", "--data", str(data), "--name", "dpo-model"]
    args += ["--method", "dpo", "--max-steps", "3", "--seq-len", "48", "--batch-size", "2"]
    code, out, err = run_cli(capsys, *args, "--eval-split", "0.2", "--nll-weight", "0.5", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["method"] == "dpo" and summary["commercial_use"] is False
    man = store.get("dpo-model").manifest
    assert man.parent == "tiny"
    lineage = man.model_dump()["lineage"]
    assert lineage["recipe"]["method"] == "dpo" and lineage["base"]["name"] == "tiny"
    assert lineage["data"][0]["licence"]["id"] == "CC-BY-NC-4.0"
    card = (store.get("dpo-model").path / "MODEL_CARD.md").read_text()
    for needle in ("## Preference tuning", "DPO", "reward accuracy", "margin", "CC-BY-NC-4.0"):
        assert needle in card, needle
    assert "plus 0.5 x the chosen answers' NLL per token (RPO)" in card
    assert "NLL of chosen answers" in card
    code, out, _ = run_cli(capsys, "models", "show", "dpo-model")
    assert code == 0 and "dpo (sigmoid) on lora" in out


def test_the_reference_is_the_parent_even_once_the_adapter_has_moved(tiny_gemma_dir: Path) -> None:
    """LoRA's reference is the same model with its adapter (and trained token rows) disabled:
    the parent's log-probabilities, with no second copy of the model."""
    from contextlib import nullcontext

    from cuvee.train.preference import PreferenceLoss, reference_logprobs

    units = _units(4, 3)
    rows = [UnitRow((u,)) for u in units]
    with torch.no_grad():
        parent = _plain_logprobs(_tiny_model(tiny_gemma_dir), units)
    tuned = _lora_with_tokens(_tiny_model(tiny_gemma_dir))
    module = PreferenceLoss(tuned, torch.float32, Recipe(method="dpo"))
    ref = reference_logprobs(module, rows, 2, torch.device("cpu"), nullcontext)
    torch.testing.assert_close(ref, parent, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        moved = _plain_logprobs(tuned, units)
    assert not torch.allclose(moved, parent, atol=1e-3)


def test_a_long_prompt_keeps_its_end_and_answers_fit_the_row(tiny_gemma_dir: Path) -> None:
    from cuvee.chat_template import get_template
    from cuvee.tokenizer import load_tokenizer
    from cuvee.train.pairs import Example, UnitEncoder, encode_units

    tokenizer = load_tokenizer(tiny_gemma_dir)
    encoder = UnitEncoder(tokenizer, get_template("gemma"), "<bos>")
    question = " ".join(["the"] * 60 + ["hello", "world"])
    long = Example((("user", question),), "it is you", "a model", None, "x:1")
    short = Example((("user", "hello"),), "it is", "you", None, "x:2")
    units, stats = encode_units(encoder, [long, short], 32, 0)
    cut = units[0]
    assert len(cut.prompt) == 16 and cut.prompt[0] == tokenizer.token_to_id("<bos>")
    full = encoder.prompt(long)
    assert cut.prompt[1:] == full[-15:]  # the end: the question's last words, the turn markers
    assert len(cut.prompt) + max(len(cut.first), len(cut.second)) <= 32
    assert cut.first[-1] == tokenizer.token_to_id("<end_of_turn>")
    assert units[1].prompt == encoder.prompt(short)
    assert (stats.kept, stats.truncated, stats.pairs) == (2, 1, 2)


@pytest.fixture
def fsdp_one_process(monkeypatch):
    """This process as a world of one under FSDP (what `torchrun --nproc-per-node=1` sets)."""
    import socket

    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for var, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "CUVEE_PARALLEL": "fsdp",
    }.items():
        monkeypatch.setenv(var, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_dpo_under_fsdp_trains_like_one_process(setup, fsdp_one_process, monkeypatch) -> None:
    """Sharded weights: the reference pass and the steps go through the FSDP-wrapped loss and
    give the losses and metrics of the plain loop."""
    import dataclasses

    from cuvee.train.loop import train

    settings, store, data = setup
    settings = dataclasses.replace(settings, device="cpu")
    recipe = _recipe(data, max_steps=3, lora_dropout=0.0)
    sharded = train(settings, recipe)
    assert sharded.summary["parallel"] == "fsdp"
    store.remove("preferred")
    monkeypatch.setenv("CUVEE_PARALLEL", "single")
    plain = train(settings, recipe)
    assert sharded.losses == pytest.approx(plain.losses, rel=1e-5, abs=1e-6)
    for key, value in plain.summary["preference"]["eval"].items():
        assert sharded.summary["preference"]["eval"][key] == pytest.approx(value, abs=1e-5), key


def test_dpo_on_two_processes_matches_accumulation_on_one(setup, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo): the losses and the summed metrics of 1 process
    accumulating the same micro-batches."""
    import dataclasses
    import os
    import subprocess
    import sys

    import yaml

    from cuvee.train.loop import find_run, train

    settings, _store, data = setup
    settings = dataclasses.replace(settings, device="cpu")
    single = train(settings, _recipe(data, grad_accum=2, lora_dropout=0.0, max_steps=3))
    recipe = _recipe(data, grad_accum=1, lora_dropout=0.0, max_steps=3, name="ddp")
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(recipe.resolved()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUVEE_DEVICE": "cpu"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "cuvee",
            "train",
            str(path),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = find_run(settings, "ddp") / "log.jsonl"
    steps = [json.loads(x) for x in log.read_text().splitlines() if '"loss"' in x]
    assert [s["loss"] for s in steps] == pytest.approx(single.losses, rel=1e-4, abs=1e-5)
    ours = [json.loads(x) for x in (single.run_dir / "log.jsonl").read_text().splitlines()]
    ours = [s for s in ours if "loss" in s]
    for a, b in zip(steps, ours, strict=True):
        assert a["accuracy"] == pytest.approx(b["accuracy"]) and a["margin"] == pytest.approx(
            b["margin"], abs=1e-5
        )


def test_with_compiled_kernels_the_first_step_still_sees_its_reference(
    setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With compiled kernels the reference pass runs them too: DPO's first loss is ln 2 and the
    held-out metrics before training are those of a policy equal to its parent. (On the tiny
    model eager and compiled kernels agree anyway; on gemma3-270m in bf16 a reference through
    eager kernels gave a first loss of 0.72.)"""
    from cuvee.config import load_settings
    from cuvee.train.loop import train

    monkeypatch.setenv("CUVEE_TRAIN_COMPILE", "on")
    _settings, _store, data = setup
    seen: list[dict] = []
    result = train(
        load_settings(),
        _recipe(data, max_steps=2, lora_dropout=0.1, precision="bf16"),  # where kernels differ
        on_step=lambda step, m: seen.append(m),
    )
    assert result.summary["hardware"]["kernels"] == "compiled"
    assert seen[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert seen[0]["rewards_chosen"] == pytest.approx(0, abs=1e-6)
    before = result.summary["preference"]["eval_before"]
    assert before["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert before["margin"] == pytest.approx(0, abs=1e-6)


def test_the_eval_report_reads_a_preference_runs_metrics(setup) -> None:
    from cuvee.eval.report import PREFERENCE_CURVES, read_run_log
    from cuvee.train.loop import train

    settings, _store, data = setup
    result = train(settings, _recipe(data, max_steps=2))
    curves = read_run_log(result.run_dir, PREFERENCE_CURVES)
    assert [step for step, _ in curves["reward accuracy"]] == [1, 2]
    assert [step for step, _ in curves["held-out reward margin"]] == [0, 2]
    assert set(read_run_log(result.run_dir)) == {"train loss", "held-out loss"}


def test_pairs_labelled_heldout_are_the_held_out_set(setup, tmp_path: Path) -> None:
    from cuvee.train.pairs import prepare_preferences

    _settings, store, _ = setup
    path = write_pairs(tmp_path / "split.json", n=20)
    records = json.loads(path.read_text())
    for i, record in enumerate(records):
        record["split"] = "heldout" if i % 4 == 0 else "train"
    path.write_text(json.dumps(records))
    prepared = prepare_preferences(store, _recipe(path, eval_split="auto"))
    assert (prepared.train_records, prepared.eval_records) == (15, 5)
    assert "heldout" in prepared.split_how
    assert sum(r.examples for r in prepared.eval_rows) == 5


def test_kto_takes_a_pair_as_two_answers_and_its_kl_answers_from_other_prompts(
    tiny_gemma_dir: Path,
) -> None:
    from cuvee.chat_template import get_template
    from cuvee.tokenizer import load_tokenizer
    from cuvee.train.pairs import Example, UnitEncoder, encode_units, for_method

    encoder = UnitEncoder(load_tokenizer(tiny_gemma_dir), get_template("gemma"), "<bos>")
    pairs = [
        Example((("user", f"{w} question"),), f"{w} answer", f"{w} model", None, f"x:{i}")
        for i, w in enumerate(WORDS[:6])
    ]
    examples = for_method(pairs, "kto")
    assert [e.label for e in examples] == [True, False] * 6
    units, stats = encode_units(encoder, examples, 32, 0)
    assert (stats.desirable, stats.undesirable) == (6, 6)
    for example, unit in zip(examples, units, strict=True):
        mate = next(e for e in examples if encoder.answer(e, e.first) == unit.second)
        assert mate.messages != example.messages


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_training_reads_what_cuvee_data_pairs_writes(setup, tmp_path: Path, method: str) -> None:
    """Pairs and KTO records made by the builders `cuvee data pairs` uses, with the sidecar it
    writes (the input's licence, the model that answered): they train, and the licence reaches
    the model."""
    from cuvee.data.records import Conversation, Origin, Turn
    from cuvee.data.writers import write_sidecar
    from cuvee.eval.preference_pairs import ScoredAnswer, kto_record, pair_record
    from cuvee.eval.verifiers import VERIFIERS, Answer, PromptCase
    from cuvee.train.loop import train

    settings, store, _ = setup
    rng = random.Random(1)
    rows = []
    for i in range(16):
        question = " ".join(rng.choice(WORDS) for _ in range(4))
        prompt = Conversation((Turn("user", question),), Origin("p.jsonl", i + 1), "alpaca")
        case = PromptCase(prompt, f"p.jsonl:{i + 1}")
        good = ScoredAnswer(Answer("hello world"), 0, {"stops": 1.0})
        bad = ScoredAnswer(Answer("the the the"), 1, {"stops": 0.0})
        if method == "dpo":
            rows.append(pair_record(case, good, bad, "tiny"))
        else:
            verifiers = [VERIFIERS["stops"]]
            rows += [kto_record(case, a, verifiers, "tiny") for a in (good, bad)]
    path = tmp_path / f"{method}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    write_sidecar(path, licence="CC-BY-NC-4.0", model={"name": "tiny"})
    result = train(settings, _recipe(path, method=method, max_steps=2))
    assert result.summary["preference"]["examples"]["pairs" if method == "dpo" else "desirable"]
    assert store.get("preferred").manifest.model_dump()["commercial_use"] is False


@pytest.mark.parametrize("method", ["dpo", "sft"])
def test_gradient_checkpointing_recomputes_layers_and_changes_no_loss(
    setup, tmp_path: Path, monkeypatch, method: str
) -> None:
    """The recipe knob recomputes each layer in the backward pass (its forward runs twice per
    micro-batch) and trains the same steps, dropout included (the RNG state is replayed)."""
    from transformers.models.gemma3 import modeling_gemma3

    from cuvee.train.loop import train

    settings, store, data = setup
    if method == "sft":
        data = write_data(tmp_path / "sft.jsonl", licence="CC-BY-4.0")
    layer = modeling_gemma3.Gemma3MLP  # inside the checkpointed decoder layer
    real = layer.forward
    calls = {"n": 0}

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(layer, "forward", counted)
    runs = {}
    for checkpointing in (False, True):
        calls["n"] = 0
        seen: list[dict] = []
        recipe = _recipe(
            data, method=method, max_steps=3, lora_dropout=0.1, eval_split="none",
            gradient_checkpointing=checkpointing, name=f"gc-{int(checkpointing)}",
        )  # fmt: skip
        train(settings, recipe, on_step=lambda step, m, seen=seen: seen.append(m))
        runs[checkpointing] = ([m["loss"] for m in seen], calls["n"])
        store.remove(recipe.name)
    (plain, plain_calls), (recomputed, recomputed_calls) = runs[False], runs[True]
    assert recomputed == pytest.approx(plain, rel=1e-5, abs=1e-6)
    # the reference pass (DPO) runs without gradients and is not recomputed
    assert recomputed_calls > plain_calls
    assert len(plain) == 3


def test_the_reference_pass_counts_in_the_runs_time(setup, monkeypatch) -> None:
    """The one-off reference pass is part of what the run costs: its wall time, cost and time
    budget include it (a slow pass is simulated with a pause)."""
    import time

    from cuvee.train import preference
    from cuvee.train.loop import train

    real = preference.reference_logprobs

    def slow(*args, **kwargs):
        time.sleep(0.6)
        return real(*args, **kwargs)

    monkeypatch.setattr(preference, "reference_logprobs", slow)
    settings, store, data = setup
    result = train(settings, _recipe(data, max_steps=1))
    assert result.summary["wall_time_s"] >= 1.2  # two passes: training and held-out answers
    card = (store.get("preferred").path / "MODEL_CARD.md").read_text()
    assert "counted in the run's time" in card


def test_nll_weight_is_dpos_only() -> None:
    assert Recipe(method="dpo", loss_type="ipo", nll_weight=1.0).nll_weight == 1.0
    for method in ("kto", "orpo", "sft"):
        with pytest.raises(ValueError, match="nll_weight is DPO's"):
            Recipe(method=method, nll_weight=0.5)
