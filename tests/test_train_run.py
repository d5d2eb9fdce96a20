"""Whole training runs on a tiny model: resume, accumulation, lineage, licences, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cuvee.errors import ConfigError, DataError, ModelNotFound
from cuvee.train.loop import Interrupted, find_run, train
from cuvee.train.recipe import Recipe
from helpers import run_cli, store_tiny, write_data

run = run_cli


def _recipe(data: Path, **kw) -> Recipe:
    base = dict(
        base="tiny",
        data=[str(data)],
        name="tuned",
        seq_len=48,
        batch_size=2,
        lr=0.01,
        max_steps=6,
        eval_every=3,
        save_every=100,
        precision="fp32",
    )
    return Recipe(**{**base, **kw})


@pytest.fixture
def setup(tiny_gemma_dir: Path, tmp_path: Path):
    settings, store = store_tiny(tiny_gemma_dir)
    data = write_data(tmp_path / "train.jsonl", licence="CC-BY-4.0", authors=["Ada", "Grace"])
    return settings, store, data


def test_a_run_registers_a_fine_tuned_model_with_its_lineage(setup) -> None:
    settings, store, data = setup
    result = train(settings, _recipe(data, authors=["Linus"]))
    from cuvee.model_loading import has_full_weights

    man = store.get("tuned").manifest
    assert man.kind == "fine-tuned" and man.parent == "tiny"
    assert not has_full_weights(store.get("tuned"))
    assert {f.path for f in man.files if f.role == "adapter"} >= {
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
    }
    assert len(result.losses) == 6 and result.summary["steps"] == 6
    lineage = man.model_dump()["lineage"]
    base_weights = store.get("tiny").manifest.file("weights").sha256
    assert lineage["base"]["name"] == "tiny"
    assert lineage["base"]["weights_sha256"] == base_weights
    assert lineage["base"]["licence"]["id"] == "MIT"
    (entry,) = lineage["data"]
    assert entry["path"] == str(data) and entry["records"] == 40
    assert len(entry["sha256"]) == 64 and entry["licence"]["id"] == "CC-BY-4.0"
    assert lineage["recipe"]["lr"] == 0.01 and lineage["seed"] == 42
    assert {"torch", "transformers", "peft", "python"} <= set(lineage["versions"])
    run = lineage["run"]
    import torch

    assert run["hardware"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert run["hardware"]["cpu_cores"] >= 1
    assert run["tokens_seen"] > 0 and run["tokens_per_s"] > 0 and run["wall_time_s"] > 0
    price = settings.price_gpu_hour if torch.cuda.is_available() else settings.price_cpu_hour
    assert run["estimated_cost_usd"] == pytest.approx(run["wall_time_s"] / 3600 * price)
    assert run["train_loss"] > 0 and run["eval_loss"] > 0 and run["base_eval_loss"] > 0
    assert lineage["contributors"] == ["Ada", "Grace", "Linus"]
    assert man.model_dump()["commercial_use"] is True
    card = (store.get("tuned").path / "MODEL_CARD.md").read_text()
    for needle in (
        "`tiny`",
        "CC-BY-4.0",
        str(data),
        "Ada",
        "Linus",
        "Commercial use: **allowed**",
        "## Intended use",
        "## Limitations",
        f"{run['tokens_seen']:,} tokens",
    ):
        assert needle in card, needle
    # Stops at the template's end of turn as well as at EOS.
    gen = json.loads((store.get("tuned").path / "generation_config.json").read_text())
    assert 5 in gen["eos_token_id"] and 1 in gen["eos_token_id"]  # <end_of_turn>, <eos>
    # The run directory keeps the resolved recipe, the JSONL log and the summary.
    log = [json.loads(x) for x in (result.run_dir / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log if "loss" in x] == [1, 2, 3, 4, 5, 6]
    assert all({"tokens_per_s", "eta_s", "cost_usd", "elapsed_s"} <= set(x) for x in log[1:])
    assert "eval_loss" in log[0] and "eval_loss" in log[3]


def test_the_adapter_model_loads_and_merged_weights_match(setup) -> None:
    import torch

    from cuvee.model_loading import load_causal_lm

    settings, store, data = setup
    train(settings, _recipe(data, merge=True, lora_dropout=0.0))
    stored = store.get("tuned")
    assert stored.manifest.file("weights") is not None
    merged = load_causal_lm(store, stored)
    # The same model rebuilt from base + adapter, without the merged weights.
    (stored.path / "model.safetensors").rename(stored.path / "moved.bin")
    stored.manifest.files = [f for f in stored.manifest.files if f.role != "weights"]
    rebuilt = load_causal_lm(store, stored)
    ids = torch.tensor([[2, 4, 10, 11, 5]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, rebuilt(ids).logits, atol=1e-5, rtol=1e-4)
    base = load_causal_lm(store, store.get("tiny"))
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, merged(ids).logits)


def test_resume_continues_exactly(setup) -> None:
    settings, store, data = setup
    recipe = _recipe(data, max_steps=6, lora_dropout=0.1)  # dropout: RNG state must carry over
    whole = train(settings, recipe)
    store.remove("tuned")
    with pytest.raises(Interrupted) as err:
        train(settings, recipe, stop_after_step=3)
    assert "--resume" in (err.value.hint or "")
    assert not store.exists("tuned")  # registered only when complete
    run_dir = find_run(settings, "tuned")
    resumed = train(settings, recipe, resume_dir=run_dir)
    assert resumed.summary["resumed_at_step"] == 3
    assert len(resumed.losses) == 6
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5, abs=1e-6)
    assert resumed.summary["eval_loss"] == pytest.approx(whole.summary["eval_loss"], rel=1e-5)


def test_same_seed_same_run_and_accumulation_equals_a_bigger_batch(setup) -> None:
    settings, store, data = setup
    kw = dict(lora_dropout=0.0, max_steps=3)
    a = train(settings, _recipe(data, batch_size=4, grad_accum=1, **kw)).losses
    store.remove("tuned")
    b = train(settings, _recipe(data, batch_size=4, grad_accum=1, **kw)).losses
    assert a == b
    store.remove("tuned")
    # 2 x 2 rows with accumulation: micro-batches hold different rows than 4-row batches, so
    # compare with the schedule that gives the same rows per step (see the schedule test); here
    # check the loss is normalised per supervised token of the step, not per micro-batch.
    c = train(settings, _recipe(data, batch_size=2, grad_accum=2, **kw)).losses
    assert all(0 < x < 10 for x in c) and c[0] == pytest.approx(a[0], rel=0.35)


def test_full_fine_tuning_trains_every_weight(setup) -> None:
    settings, store, data = setup
    result = train(settings, _recipe(data, adapter="full", lr=0.001, max_steps=2))
    stored = store.get("tuned")
    assert stored.manifest.file("weights") is not None
    assert not (stored.path / "adapter").exists()
    assert result.summary["trainable_parameters"] == store.get("tiny").manifest.parameters


@pytest.mark.parametrize(
    ("licence", "expected", "reason"),
    [
        ("CC-BY-NC-4.0", False, "forbids commercial use"),
        (None, None, "declares no licence"),
    ],
)
def test_licence_of_the_data_marks_the_model(
    tiny_gemma_dir: Path, tmp_path: Path, capsys, licence, expected, reason
) -> None:
    settings, store = store_tiny(tiny_gemma_dir)
    data = write_data(tmp_path / "d.jsonl", licence=licence)
    train(settings, _recipe(data, max_steps=1))
    man = store.get("tuned").manifest.model_dump()
    assert man["commercial_use"] is expected
    assert any(reason in r for r in man["commercial_use_reasons"])
    assert man["licence"]["commercial_use"] is expected
    card = (store.get("tuned").path / "MODEL_CARD.md").read_text()
    assert reason in card
    _code, out, _ = run(capsys, "models", "show", "tuned")
    label = {False: "commercial use NOT allowed", None: "commercial use unknown"}[expected]
    assert label in out and reason in out


def test_bad_input_changes_nothing(setup, tmp_path: Path) -> None:
    settings, store, data = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hello", "output": "world"}\n{"instruction": 3}\nnot json\n')
    with pytest.raises(DataError) as err:
        train(settings, _recipe(bad))
    assert "bad.jsonl:2" in str(err.value) and "bad.jsonl:3" in str(err.value)
    with pytest.raises(ModelNotFound):
        train(settings, _recipe(data, base="missing"))
    with pytest.raises(ConfigError, match="lora_targets"):
        train(settings, _recipe(data, lora_targets=["nope_proj"]))
    assert store.names() == ["tiny"]
    train(settings, _recipe(data, max_steps=1))
    with pytest.raises(ConfigError, match="already in the store"):
        train(settings, _recipe(data, max_steps=1))
    assert not list(store.staging_root.glob("*")) if store.staging_root.exists() else True


def test_heldout_records_are_never_trained_on(setup, tmp_path: Path) -> None:
    from cuvee.data.formats import read_file
    from cuvee.train.data import split_records

    _settings, _store, _data = setup
    path = tmp_path / "split.jsonl"
    rows = [
        {
            "instruction": f"hello {i}",
            "response": "world",
            "split": "heldout" if i % 4 == 0 else "train",
        }
        for i in range(40)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    records = read_file(path).records
    for how in ("auto", 0.1, "none"):
        split = split_records(records, how, 0, 200)
        assert not any(r.split == "heldout" for r in split.train)
    assert len(split_records(records, "auto", 0, 200).eval) == 10


def test_cli_train_json_and_progress(setup, capsys) -> None:
    _settings, _store, data = setup
    args = [
        "train",
        "--base",
        "tiny",
        "--data",
        str(data),
        "--name",
        "cli-model",
        "--max-steps",
        "2",
        "--seq-len",
        "48",
        "--batch-size",
        "2",
        "--author",
        "Me",
    ]
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["model"] == "cli-model" and summary["steps"] == 2
    code, out, err = run(capsys, "train", "--resume", "cli-model", "--lr", "1")
    assert code == 2 and "only --time-budget and --max-steps" in err
    code, out, err = run(capsys, "train", "--list-recipes")
    assert code == 0 and "starter-lora-cpu" in out
    code, out, err = run(capsys, "train", "--base", "tiny", "--data", str(data))
    assert code == 1 and "needs a name" in err and "--name" in err


def test_missing_tracker_fails_before_training(setup) -> None:
    import importlib.util

    settings, _store, data = setup
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    with pytest.raises(ConfigError, match="tensorboard"):
        train(settings, _recipe(data, report_to=["tensorboard"]))
    assert not settings.runs_dir.exists() or not any(settings.runs_dir.iterdir())


@pytest.mark.parametrize(
    ("launcher", "strategy", "files"),
    [
        ("torchrun", "ddp", {"recipe"}),
        ("accelerate", "ddp", {"recipe", "accelerate"}),
        ("accelerate", "fsdp", {"recipe", "accelerate"}),
        ("accelerate", "fsdp-grad-op", {"recipe", "accelerate"}),
        ("torchrun", "fsdp", {"recipe"}),
    ],
)
def test_launch_configs_are_generated_and_validated(
    setup, launcher: str, strategy: str, files: set[str]
) -> None:
    import yaml

    from cuvee.train.launch import launch_plan, validate_accelerate_config

    settings, _store, data = setup
    plan = launch_plan(settings, _recipe(data), launcher, strategy, gpus=4, nodes=2)
    assert set(plan.files) == files and plan.processes == 8
    recipe = yaml.safe_load(plan.files["recipe"].read_text())
    assert recipe["data"] == [str(data.resolve())]
    assert plan.command[-4:] == ["-m", "cuvee", "train", str(plan.files["recipe"])]
    if "accelerate" in files:
        validate_accelerate_config(plan.files["accelerate"])
        config = yaml.safe_load(plan.files["accelerate"].read_text())
        assert config["num_processes"] == 8 and config["num_machines"] == 2
        assert config["mixed_precision"] == "no"
        if strategy.startswith("fsdp"):
            fsdp = config["fsdp_config"]
            assert fsdp["fsdp_version"] == 2
            assert fsdp["fsdp_reshard_after_forward"] is (strategy == "fsdp")
    if launcher == "torchrun" and strategy == "fsdp":
        assert plan.command[:2] == ["env", "CUVEE_PARALLEL=fsdp"]


def test_the_cli_offers_every_strategy() -> None:
    from cuvee.cli.train import train as train_command
    from cuvee.train.launch import STRATEGIES

    option = next(p for p in train_command.params if p.name == "strategy")
    assert set(option.type.choices) == set(STRATEGIES)


def test_launch_rejects_what_cannot_work(setup, tmp_path: Path) -> None:
    from cuvee.train.launch import launch_plan

    settings, _store, data = setup
    with pytest.raises(ConfigError, match="needs --launcher"):
        launch_plan(settings, _recipe(data), "slurm", "fsdp", gpus=2)
    with pytest.raises(ConfigError, match="not found"):
        launch_plan(settings, _recipe(tmp_path / "nope.jsonl"), "torchrun", "ddp", gpus=2)
    bad = tmp_path / "accelerate.yaml"
    bad.write_text("distributed_type: MULTI_GPU\nnot_a_field: 1\n")
    from cuvee.train.launch import validate_accelerate_config

    with pytest.raises(ConfigError):
        validate_accelerate_config(bad)


def test_ddp_on_two_processes_matches_accumulation_on_one(setup, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo) gives the loss sequence of 1 process accumulating
    the same micro-batches."""
    import dataclasses

    import yaml

    settings, _store, data = setup
    # gloo on CPU on every machine (one GPU cannot hold two ranks), the reference on CPU too
    settings = dataclasses.replace(settings, device="cpu")
    single = train(settings, _recipe(data, grad_accum=2, lora_dropout=0.0, max_steps=3)).losses
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
    losses = [json.loads(x)["loss"] for x in log.read_text().splitlines() if '"loss"' in x]
    assert losses == pytest.approx(single, rel=1e-4, abs=1e-5)


def test_fsdp_under_accelerate_launch_on_two_processes(setup) -> None:
    """The generated FSDP config, started with `accelerate launch` (2 CPU processes, gloo):
    the loss sequence of one process accumulating the same micro-batches, and a stored model."""
    import dataclasses

    from cuvee.train.launch import launch_plan

    settings, store, data = setup
    settings = dataclasses.replace(settings, device="cpu")
    single = train(settings, _recipe(data, grad_accum=2, lora_dropout=0.0, max_steps=3)).losses
    recipe = _recipe(data, grad_accum=1, lora_dropout=0.0, max_steps=3, name="sharded")
    plan = launch_plan(settings, recipe, "accelerate", "fsdp", gpus=2)
    assert plan.command[:2] == ["accelerate", "launch"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUVEE_DEVICE": "cpu"}
    env["CUVEE_HOME"] = str(settings.home)
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", *plan.command[2:], "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["parallel"] == "fsdp" and summary["hardware"]["processes"] == 2
    log = find_run(settings, "sharded") / "log.jsonl"
    losses = [json.loads(x)["loss"] for x in log.read_text().splitlines() if '"loss"' in x]
    assert losses == pytest.approx(single, rel=1e-4, abs=1e-5)
    assert store.get("sharded").manifest.kind == "fine-tuned"


def test_deepspeed_is_refused_and_fsdp_wants_a_launcher(setup, monkeypatch) -> None:
    """A DeepSpeed launch is not silently run as something else; FSDP started without a
    launcher says how to start it. Neither leaves anything in the store."""
    settings, store, data = setup
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="does not drive DeepSpeed") as err:
        train(settings, _recipe(data))
    assert "fsdp" in (err.value.hint or "")
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="needs a launcher"):
        train(settings, _recipe(data))
    assert store.names() == ["tiny"]


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


def test_fsdp_trains_like_one_process_and_resumes_exactly(setup, fsdp_one_process) -> None:
    """Sharded weights, gathered checkpoints and the gathered final model: the same losses and
    adapter as the plain loop, and an interrupted FSDP run resumes to the same losses."""
    import dataclasses

    from safetensors.torch import load_file

    settings, store, data = setup
    settings = dataclasses.replace(settings, device="cpu")
    recipe = _recipe(data, max_steps=4, lora_dropout=0.0)
    sharded = train(settings, recipe)
    assert sharded.summary["parallel"] == "fsdp"
    adapter = store.get("tuned").path / "adapter" / "adapter_model.safetensors"
    sharded_weights = load_file(str(adapter))
    store.remove("tuned")
    with pytest.raises(Interrupted):
        train(settings, recipe, stop_after_step=2)
    resumed = train(settings, recipe, resume_dir=find_run(settings, "tuned"))
    assert resumed.losses == pytest.approx(sharded.losses, rel=1e-5, abs=1e-6)
    store.remove("tuned")

    os.environ["CUVEE_PARALLEL"] = "single"
    plain = train(settings, recipe)
    assert plain.summary["parallel"] == "single"
    assert sharded.losses == pytest.approx(plain.losses, rel=1e-5, abs=1e-6)
    plain_weights = load_file(str(adapter))
    assert set(plain_weights) == set(sharded_weights)
    for name, tensor in plain_weights.items():
        assert sharded_weights[name].allclose(tensor, rtol=1e-4, atol=1e-6), name


def test_the_base_defaults_to_the_setting(setup, monkeypatch) -> None:
    from cuvee.config import load_settings

    _, _, data = setup
    monkeypatch.setenv("CUVEE_DEFAULT_BASE", "tiny")
    result = train(load_settings(), _recipe(data, base=None, max_steps=1))
    assert result.model.manifest.parent == "tiny"
    assert result.model.manifest.model_dump()["lineage"]["recipe"]["base"] == "tiny"


def test_ctrl_c_finishes_the_step_saves_and_resumes(setup) -> None:
    import signal

    settings, store, data = setup
    recipe = _recipe(data, max_steps=5, lora_dropout=0.0)
    # what the run must restore: Python's default, or SIG_IGN when the tests run in the
    # background of a non-interactive shell (nohup, `cmd &`)
    before = signal.getsignal(signal.SIGINT)

    def interrupt(step: int, metrics: dict) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        train(settings, recipe, on_step=interrupt)
    run_dir = find_run(settings, "tuned")
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-000002"]
    assert not store.exists("tuned")
    assert signal.getsignal(signal.SIGINT) is before  # restored
    resumed = train(settings, recipe, resume_dir=run_dir)
    assert resumed.summary["steps"] == 5 and store.exists("tuned")
    assert not (run_dir / "checkpoints").exists()  # a finished run keeps no checkpoints
    with pytest.raises(ConfigError, match="already completed"):
        train(settings, recipe, resume_dir=run_dir)


def test_mlflow_receives_the_metrics_when_asked(setup, monkeypatch) -> None:
    import importlib.machinery
    import importlib.util
    import types

    calls: dict[str, list] = {"params": [], "metrics": [], "runs": []}
    fake = types.ModuleType("mlflow")
    fake.__spec__ = importlib.machinery.ModuleSpec("mlflow", None)
    fake.start_run = lambda run_name: calls["runs"].append(run_name)
    fake.log_params = lambda params: calls["params"].append(params)
    fake.log_metrics = lambda metrics, step: calls["metrics"].append((step, metrics))
    fake.end_run = lambda: calls["runs"].append("end")
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    # only mlflow is faked: peft, imported for the first time when this test runs alone,
    # asks accelerate whether torch_mlu exists, and a spec for every name says it does
    real = importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec",
        lambda name, *a: fake.__spec__ if name == "mlflow" else real(name, *a),
    )
    settings, _, data = setup
    train(settings, _recipe(data, max_steps=2, report_to=["mlflow"]))
    assert calls["params"][0]["lr"] == "0.01" and calls["runs"][-1] == "end"
    steps = [s for s, m in calls["metrics"] if "loss" in m]
    assert steps == [1, 2]


def test_a_time_budget_that_fits_few_steps_says_so() -> None:
    # a 10-minute quickstart on a 2-core CPU without native bf16 fits about 9 steps of 3,000
    # tokens: the user is told, once, that the model will barely change, and what to do
    from cuvee.train.loop import FEW_STEPS, few_steps_hint

    assert "longer --time-budget" in few_steps_hint(9, 700)
    assert "cuvee doctor" in few_steps_hint(FEW_STEPS - 1, 700)
    assert few_steps_hint(FEW_STEPS, 700) == ""  # enough steps
    assert few_steps_hint(9, 9) == ""  # the run is short anyway: the budget cut nothing
