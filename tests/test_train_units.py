"""The parts of training that must be right by construction: recipes, masking, packing
isolation, the chunked loss, the schedule, the run state a checkpoint keeps."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from cuvee.chat_template import get_template
from cuvee.data.records import Conversation, Origin, Turn
from cuvee.errors import ConfigError
from cuvee.tokenizer import load_tokenizer
from cuvee.train.encode import IGNORE, Encoder
from cuvee.train.loss import Workspace, linear_cross_entropy
from cuvee.train.packing import assign_bins, pack
from cuvee.train.recipe import Recipe, build_recipe, parse_duration, shipped_recipes
from cuvee.train.schedule import Schedule, lr_at, plan_steps, replan_due, warmup_for

# ---------------------------------------------------------------------------- recipes


def test_shipped_recipes_load_and_open_with_their_command() -> None:
    recipes = shipped_recipes()
    assert {"starter-lora-cpu", "dolly-full-gpu"} <= set(recipes)
    for name, path in recipes.items():
        text = path.read_text(encoding="utf-8")
        assert text.startswith("# Run:  cuvee train " + name), name
        recipe = build_recipe(name)
        assert isinstance(recipe, Recipe)
    assert build_recipe("starter-lora-cpu").adapter == "lora"
    assert build_recipe("starter-lora-cpu").time_budget_s == 600
    assert build_recipe("dolly-full-gpu").adapter == "full"


def test_flags_override_the_recipe_and_none_means_unset(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("base: tiny\nlr: 0.001\nseq_len: 64\n")
    recipe = build_recipe(path, {"lr": 0.5, "seq_len": None, "lora_targets": ["all-linear"]})
    assert recipe.lr == 0.5 and recipe.seq_len == 64 and recipe.base == "tiny"
    assert "down_proj" in recipe.lora_targets


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("lerning_rate: 0.1\n", "lerning_rate: unknown key"),
        ("method: qlora\n", "method"),
        ("adapter: qlora\n", "adapter"),
        ("time_budget: soon\n", "time_budget"),
        ("eval_split: 0.9\n", "eval_split"),
        ("augment: 9\n", "augment"),
        ("- a list\n", "mapping"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        build_recipe(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_augment_adds_checked_variants_to_the_training_records_only() -> None:
    from cuvee.data.constraints import check_constraint
    from cuvee.data.starter import load_starter
    from cuvee.train.data import augment_train, split_records

    records = load_starter("all")
    split = split_records(records, "auto", 42, 200)
    assert augment_train(split, 0, 42) is split
    augmented = augment_train(split, 1, 42)
    assert augmented.eval == split.eval  # held-out answers are never rewritten into training
    assert augmented.train[: len(split.train)] == split.train
    variants = augmented.train[len(split.train) :]
    assert len(split.train) // 2 < len(variants) <= len(split.train)
    assert f"{len(variants)} format-constrained variants" in augmented.how
    held_out = {r.turns[-2].content for r in split.eval}
    for variant in variants:
        constraint = variant.metadata["constraint"]
        assert check_constraint(constraint["id"], variant.turns[-1].content, constraint["kwargs"])
        assert not any(variant.turns[-2].content.startswith(h) for h in held_out)
    assert augment_train(split, 1, 42).train == augmented.train  # seeded: the same run twice
    # the shipped CPU recipe uses it, and the flag reaches the recipe
    assert build_recipe("starter-lora-cpu").augment == 4
    assert build_recipe(None, {"augment": 2}).augment == 2


def test_unknown_recipe_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError) as err:
        build_recipe("no-such-recipe")
    assert "starter-lora-cpu" in (err.value.hint or "")


def test_durations() -> None:
    assert parse_duration("90") == 90 and parse_duration("10m") == 600
    assert parse_duration("1.5h") == 5400 and parse_duration(None) is None
    with pytest.raises(ValueError):
        parse_duration("0s")


# ---------------------------------------------------------------------------- masking


def _conv(*turns: tuple[str, str], system: str | None = None) -> Conversation:
    return Conversation(
        turns=tuple(Turn(role, text) for role, text in turns),
        origin=Origin("t.jsonl", 1),
        format="openai",
        system=system,
    )


@pytest.fixture
def encoder(tiny_gemma_dir: Path) -> Encoder:
    return Encoder(
        load_tokenizer(tiny_gemma_dir),
        get_template("gemma"),
        bos_token="<bos>",
        eos_token="<eos>",
    )


def _targets(example) -> list[int]:
    return [t for t in example.labels if t != IGNORE]


def test_only_assistant_tokens_and_their_end_of_turn_are_learned(encoder: Encoder) -> None:
    tok = encoder.tokenizer
    record = _conv(("user", "hello world"), ("assistant", "the answer"), system="you model")
    example = encoder.encode(record, 64)
    answer = tok.encode("the answer", add_special_tokens=False).ids
    assert _targets(example) == [*answer, encoder.end_of_turn_id]
    # The labels are the next tokens: each target sits one position before its token.
    for i, label in enumerate(example.labels):
        if label != IGNORE:
            assert example.input_ids[i + 1] == label


def test_every_assistant_turn_is_learned_in_multi_turn(encoder: Encoder) -> None:
    record = _conv(
        ("user", "hello"),
        ("assistant", "world"),
        ("user", "the question"),
        ("assistant", "a answer"),
    )
    example = encoder.encode(record, 64)
    eot = encoder.end_of_turn_id
    ids = encoder.tokenizer.encode("world a answer", add_special_tokens=False).ids
    assert _targets(example) == [ids[0], eot, ids[1], ids[2], eot]


def test_train_on_prompt_learns_more(encoder: Encoder) -> None:
    record = _conv(("user", "hello world"), ("assistant", "the answer"))
    masked = encoder.encode(record, 64)
    encoder.train_on_prompt = True
    full = encoder.encode(record, 64)
    assert full.supervised > masked.supervised
    assert full.supervised == len(full) - 1  # every token after <bos>


def test_truncation_and_records_with_nothing_to_learn(encoder: Encoder) -> None:
    record = _conv(("user", " ".join(["hello"] * 30)), ("assistant", "world"))
    assert encoder.encode(record, 16) is None  # the answer was cut off entirely
    kept = encoder.encode(record, 64)
    assert kept is not None and not kept.truncated
    long_answer = _conv(("user", "hello"), ("assistant", " ".join(["world"] * 30)))
    cut = encoder.encode(long_answer, 16)
    assert cut.truncated and len(cut) == 16


# ---------------------------------------------------------------------------- packing


def test_bins_respect_capacity_and_keep_every_example() -> None:
    lengths = [5, 9, 3, 7, 2, 8, 1, 6]
    bins = assign_bins(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 5  # sum 41 needs at least 5 bins of 10
    with pytest.raises(ValueError):
        assign_bins([11], 10)


def test_packed_examples_do_not_see_each_other(tiny_gemma_dir: Path, encoder: Encoder) -> None:
    """The logits of an example packed after another equal its logits alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir, attn_implementation="sdpa")
    model.eval()
    a = encoder.encode(_conv(("user", "hello world the"), ("assistant", "it is")), 64)
    b = encoder.encode(_conv(("user", "a of to"), ("assistant", "you that and")), 64)
    rows = pack([a, b], 40, 0)
    assert len(rows) == 1
    row = rows[0]
    ids = torch.tensor([row.input_ids])
    pos = torch.tensor([row.position_ids])
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        # Where does each example sit in the row? Find b's start by its position restart.
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        for example in (a, b):
            alone = model(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0]
            start = next(
                s for s in starts if row.input_ids[s : s + len(example)] == example.input_ids
            )
            torch.testing.assert_close(
                packed[start : start + len(example)], alone, atol=1e-5, rtol=1e-4
            )
        # And the check can fail: without position restarts the second example sees the first.
        leaky = model(input_ids=ids, use_cache=False).logits[0]
        second = max(s for s in starts if s < row.real_tokens)
        assert not torch.allclose(leaky[second : second + 3], packed[second : second + 3])


def test_padding_is_never_supervised() -> None:
    from cuvee.train.encode import Example

    rows = pack([Example([2, 5, 6], [5, 6, IGNORE])], 8, 0)
    assert rows[0].labels[3:] == [IGNORE] * 5 and rows[0].real_tokens == 3
    assert rows[0].position_ids == [0, 1, 2, 0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------- loss


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_chunked_loss_matches_plain_cross_entropy(softcap: float | None) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(37, 8, requires_grad=True)
    weight = torch.randn(5000, 8, requires_grad=True)  # several chunks of rows
    targets = torch.randint(0, 5000, (37,))
    loss = linear_cross_entropy(hidden, weight, targets, softcap=softcap)
    loss.backward()
    h2 = hidden.detach().clone().requires_grad_()
    w2 = weight.detach().clone().requires_grad_()
    logits = h2 @ w2.t()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    ref = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(hidden.grad, h2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weight.grad, w2.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_softmax_equals_torch_softmax(dtype: torch.dtype) -> None:
    from cuvee.train.loss import _softmax_

    x = (torch.randn(7, 70_000) * 4).to(dtype)
    expected = torch.softmax(x, -1)
    out = _softmax_(x)
    assert out.data_ptr() == x.data_ptr() and torch.equal(out, expected)


@pytest.mark.parametrize("train_head", [False, True])
def test_replaced_head_rows_match_a_spliced_head(train_head: bool) -> None:
    """Rows replaced by trainable values (turn tokens over a frozen head) give the loss and
    gradients of a head with those rows spliced in; one workspace reused across calls."""
    torch.manual_seed(1)
    index = torch.tensor([7, 4001])
    ws = Workspace()
    for _call in range(2):
        hidden = torch.randn(40, 8, requires_grad=True)
        weight = torch.randn(5000, 8, requires_grad=train_head)
        values = torch.randn(2, 8, requires_grad=True)
        targets = torch.randint(0, 5000, (40,))
        targets[:3] = torch.tensor([7, 4001, 7])
        loss = linear_cross_entropy(
            hidden, weight, targets, row_index=index, row_values=values, workspace=ws
        )
        (loss * 0.5).backward()
        h2, v2 = hidden.detach().clone().requires_grad_(), values.detach().clone().requires_grad_()
        w2 = weight.detach().clone().requires_grad_(train_head)
        spliced = w2.index_copy(0, index, v2)
        ref = torch.nn.functional.cross_entropy(h2 @ spliced.t(), targets, reduction="sum")
        (ref * 0.5).backward()
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(hidden.grad, h2.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(values.grad, v2.grad, rtol=1e-4, atol=1e-5)
        if train_head:
            torch.testing.assert_close(weight.grad, w2.grad, rtol=1e-4, atol=1e-5)
            assert not weight.grad[index].any()


def test_loss_with_frozen_head_gives_no_weight_gradient() -> None:
    hidden = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(50, 8)
    loss = linear_cross_entropy(hidden, weight, torch.tensor([1, 2, 3, 4]))
    (loss * 2).backward()
    assert hidden.grad is not None and weight.grad is None


# ---------------------------------------------------------------------------- schedule


def test_schedule_is_deterministic_and_covers_each_epoch() -> None:
    s = Schedule(rows=10, batch_size=3, grad_accum=2, epochs=1, seed=7)
    assert s.micro_per_epoch == 4 and s.steps_for_epochs == 2
    seen = [r for step in range(2) for slot in s.step(step) for rows in slot for r in rows]
    assert sorted(seen) == list(range(10))
    again = Schedule(rows=10, batch_size=3, grad_accum=2, epochs=1, seed=7)
    assert again.step(1) == s.step(1)


def test_data_parallel_schedule_splits_the_single_process_order() -> None:
    """Two processes with accumulation 1 see, per step, the micro-batches one process with
    accumulation 2 sees: the same updates, only spread out."""
    one = Schedule(rows=20, batch_size=2, grad_accum=2, epochs=1, seed=3)
    two = Schedule(rows=20, batch_size=2, grad_accum=1, epochs=1, seed=3, world=2)
    for step in range(one.steps_for_epochs):
        flat_one = [slot[0] for slot in one.step(step)]
        flat_two = two.step(step)[0]
        assert flat_one == flat_two


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    lrs = [lr_at(s, 10, 2, 1.0) for s in range(10)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))
    assert lr_at(10, 10, 2, 1.0) == pytest.approx(0.0)


def test_loss_module_matches_the_full_forward_with_trainable_turn_tokens(
    tiny_gemma_dir: Path, encoder: Encoder
) -> None:
    """SFTLoss (head only at supervised rows, trainable token rows spliced in) gives the loss
    and gradients of the plain forward over full logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cuvee.train.sft import SFTLoss
    from cuvee.train.surgery import sparse_token_rows

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir, attn_implementation="sdpa")
    config = LoraConfig(
        r=4,
        target_modules=["q_proj", "down_proj"],
        trainable_token_indices=[4, 5],
        lora_dropout=0.0,
    )
    model = get_peft_model(model, config)
    delta = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    with torch.no_grad():
        delta.add_(torch.randn_like(delta))  # make the spliced rows differ from the base's
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    examples = [
        encoder.encode(_conv(("user", "hello world the"), ("assistant", "it is you")), 64),
        encoder.encode(_conv(("user", "a of"), ("assistant", "that and the world")), 64),
    ]
    rows = pack(examples, 24, 0)
    batch = {
        "input_ids": torch.tensor([r.input_ids for r in rows]),
        "position_ids": torch.tensor([r.position_ids for r in rows]),
        "labels": torch.tensor([r.labels for r in rows]),
    }
    # The reference: peft's own forward over full logits.
    logits = model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
    ).logits
    ref = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE, reduction="sum"
    )
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    assert sparse_token_rows(model)
    from cuvee.train.surgery import causal_lm, head_weights

    weight, index, rows = head_weights(causal_lm(model).get_output_embeddings())
    assert index.tolist() == [4, 5] and rows.requires_grad and not weight.requires_grad
    ours = SFTLoss(model, torch.float32)(**batch)
    ours.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert any("trainable_tokens_delta" in n for n in ref_grads)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-5, msg=n)


def test_a_time_budget_is_replanned_from_the_recent_pace() -> None:
    due = [n for n in range(1, 101) if replan_due(n)]
    assert due == [2, 12, 20, 40, 60, 80, 100]  # not only at the start
    # a slow start (20 s a step, another job on the machine) plans few steps ...
    early = plan_steps(done=12, seconds_left=1500, per_step=20.0, limit=1000)
    assert early == 12 + 75
    # ... and when the pace triples the plan grows to fill the budget, up to the epochs' limit
    assert plan_steps(done=40, seconds_left=1100, per_step=6.5, limit=1000) == 40 + 169
    assert plan_steps(done=40, seconds_left=1100, per_step=6.5, limit=150) == 150
    # never fewer than already done, even with no time left
    assert plan_steps(done=40, seconds_left=-30, per_step=6.5, limit=1000) == 40


def test_a_replan_after_the_warmup_does_not_restart_it() -> None:
    assert warmup_for(0.05, 80, step=0) == 4
    assert warmup_for(0.05, 400, step=3, current=4) == 20  # still ramping: follows the plan
    assert warmup_for(0.05, 400, step=40, current=4) == 4  # past it: kept
    peak = 1e-3
    # at step 10 of a plan grown from 80 to 400 steps: near the peak, where restarting the
    # ramp would have dropped it to 11/20 of it
    assert lr_at(10, 400, warmup_for(0.05, 400, 10, 4), peak) > peak * 0.99
    assert lr_at(10, 400, warmup_for(0.05, 400, 10), peak) < peak * 0.6


# ---------------------------------------------------------------------------- run state

# state.json of a checkpoint as the loop wrote it while its run state was a dict of these keys
# (a tiny LoRA run stopped at step 4): the format a resume must go on reading
OLD_STATE_JSON = """{
 "step": 4,
 "total_steps": 7,
 "elapsed_s": 0.8113,
 "tokens_seen": 677,
 "supervised_seen": 231,
 "losses": [
  4.201379910321303,
  4.070565938949585,
  3.9415713946024575,
  3.9445323944091797
 ],
 "evals": [
  {
   "step": 0,
   "eval_loss": 4.288240432739258
  },
  {
   "step": 3,
   "eval_loss": 3.8598395756312778
  }
 ],
 "base_eval_loss": 4.288240432739258,
 "parallel": "single",
 "warmup": 1
}"""


def test_a_run_state_written_by_the_old_loop_loads_and_is_written_back_the_same(
    tmp_path: Path,
) -> None:
    from cuvee.train import checkpoint as ckpt

    state = ckpt.RunState.from_json(json.loads(OLD_STATE_JSON), tmp_path / "state.json")
    assert (state.step, state.total_steps, state.warmup, state.parallel) == (4, 7, 1, "single")
    assert state.losses[-1] == 3.9445323944091797
    assert state.evals[1] == {"step": 3, "eval_loss": 3.8598395756312778}
    assert json.dumps(state.to_json(), indent=1) == OLD_STATE_JSON  # same keys, order, values
    old = json.loads(OLD_STATE_JSON)
    # through a checkpoint on disk, as --resume reads it
    directory = tmp_path / "checkpoints"
    saved = ckpt.save(directory, 4, {"w": torch.ones(2)}, {}, old, keep=2)
    resumed, weights, _ = ckpt.load_run(saved, {"w"})
    assert resumed == state and torch.equal(weights["w"], torch.ones(2))
    state.record(3.9, tokens=180, supervised=70)
    ckpt.save(directory, state.step, {"w": torch.ones(2)}, {}, state, keep=2)
    again = json.loads((directory / "step-000005" / ckpt.STATE).read_text(encoding="utf-8"))
    assert list(again) == list(old)
    assert again["step"] == 5 and again["losses"][-1] == 3.9 and again["tokens_seen"] == 857


def test_a_run_state_from_before_parallel_and_warmup_were_kept_still_loads(
    tmp_path: Path,
) -> None:
    from cuvee.train import checkpoint as ckpt

    old = json.loads(OLD_STATE_JSON)
    del old["parallel"], old["warmup"]
    state = ckpt.RunState.from_json(old, tmp_path / "state.json")
    assert state.parallel == "single" and state.warmup is None  # the loop recomputes it


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.update(learning_rate=0.1), "unknown key(s) learning_rate"),
        (lambda s: s.pop("losses"), "missing key(s) losses"),
    ],
)
def test_a_run_state_with_an_unknown_or_missing_key_is_refused_naming_the_file(
    tmp_path: Path, edit, named: str
) -> None:
    from cuvee.errors import CuveeError
    from cuvee.train import checkpoint as ckpt

    state = json.loads(OLD_STATE_JSON)
    edit(state)
    saved = ckpt.save(tmp_path / "checkpoints", 4, {"w": torch.ones(2)}, {}, state, keep=2)
    with pytest.raises(CuveeError) as caught:
        ckpt.load_run(saved, {"w"})
    message = str(caught.value)
    assert str(saved / ckpt.STATE) in message and named in message, message
    with pytest.raises(CuveeError, match="a run state is a JSON object"):
        ckpt.RunState.from_json([1, 2], saved / ckpt.STATE)
