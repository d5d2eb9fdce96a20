"""Every command's --help, walked from the click group (a new command is covered by itself), and
the help and choices generated from the registries: suites, export formats, engines, data
formats and writers, and one `cuvee train` flag per Recipe field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from cuvee.cli import COMMANDS, cli
from cuvee.cli.train import flag_name, recipe_overrides
from cuvee.train.recipe import Recipe
from helpers import run_cli


def _walk(group: click.Group, path: tuple[str, ...], ctx: click.Context):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"{' '.join((*path, name))} is listed but does not load"
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _walk(command, (*path, name), click.Context(command, ctx, name))


COMMAND_TREE: dict[tuple[str, ...], click.Command] = {
    (): cli,
    **dict(_walk(cli, (), click.Context(cli, info_name="cuvee"))),
}


def _help(*path: str) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="cuvee", terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def _flat(text: str) -> str:
    """Whitespace folded: help wraps long lines wherever the width falls."""
    return " ".join(text.split())


def _param(path: tuple[str, ...], name: str) -> click.Parameter:
    return next(p for p in COMMAND_TREE[path].params if p.name == name)


def test_the_walk_finds_the_nested_commands() -> None:
    assert set(COMMANDS) <= {path[0] for path in COMMAND_TREE if path}
    assert ("data", "starter") in COMMAND_TREE and ("models", "pull") in COMMAND_TREE


@pytest.mark.parametrize("path", list(COMMAND_TREE), ids=lambda p: " ".join(p) or "cuvee")
def test_every_command_has_a_help(path: tuple[str, ...]) -> None:
    out = _help(*path)
    assert out.startswith("Usage: cuvee" + "".join(f" {p}" for p in path) + " ")
    description = (COMMAND_TREE[path].help or "").strip()
    assert description, f"`cuvee {' '.join(path)}` has no description"
    assert _flat(description.split("\n\n")[0]) in _flat(out)
    for param in COMMAND_TREE[path].params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.opts[0] in out


def test_help_imports_nothing_heavy() -> None:
    """Every --help stays instant: the registries it lists are read without torch and co."""
    paths = [list(p) for p in COMMAND_TREE]
    probe = (
        "import sys\nfrom cuvee.cli import main\n"
        f"for path in {paths!r}:\n"
        "    try:\n        main([*path, '--help'])\n    except SystemExit:\n        pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'gguf', 'tokenizers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def test_eval_lists_every_registered_suite() -> None:
    from cuvee.eval.suites import SUITES, suite_names

    out = _help("eval")
    for name in suite_names():
        assert name in out and _flat(SUITES[name].description) in _flat(out)


def test_export_offers_every_registered_format() -> None:
    from cuvee.export.formats import FORMATS

    out = _help("export")
    assert set(_param(("export",), "fmt").type.choices) == set(FORMATS)
    quants = {q for fmt in FORMATS.values() for q in fmt.quants}
    assert set(_param(("export",), "quant").type.choices) == quants
    for fmt in FORMATS.values():
        assert fmt.name in out and _flat(fmt.description) in _flat(out)
        # the one line `cuvee --help` shows without importing the registry
        assert fmt.name in COMMANDS["export"][2].lower()


def test_every_engine_choice_is_the_registry() -> None:
    from cuvee.engine import ENGINES

    with_engine = [
        path for path, c in COMMAND_TREE.items() if any(p.name == "engine" for p in c.params)
    ]
    # run and chat have --engine; serve picks each model's engine itself and has none today,
    # but any command that gets an --engine (serve included) is checked here by itself
    assert {("run",), ("chat",)} <= set(with_engine)
    for path in with_engine:
        assert set(_param(path, "engine").type.choices) == set(ENGINES), path
        out = _help(*path)
        for name in ENGINES:
            assert name in out, (path, name)


def test_data_offers_the_registered_formats_and_writers() -> None:
    from cuvee.data.formats import FORMATS
    from cuvee.data.preference import PREFERENCE_FORMATS
    from cuvee.data.writers import WRITERS

    out = _help("data")
    for fmt in [*FORMATS.values(), *PREFERENCE_FORMATS.values()]:
        assert fmt.name in out and _flat(fmt.description) in _flat(out)
    assert set(_param(("data", "augment"), "fmt").type.choices) == set(FORMATS)
    assert set(_param(("data", "check"), "fmt").type.choices) == {
        *FORMATS,
        *PREFERENCE_FORMATS,
    }
    assert set(_param(("data", "starter"), "fmt").type.choices) == set(WRITERS)
    assert "export" not in out.split("Commands:")[1]  # the subcommand is `starter`


def test_every_recipe_field_has_a_train_flag() -> None:
    out = _help("train")
    for name, field in Recipe.model_fields.items():
        params = [p for p in COMMAND_TREE[("train",)].params if p.name == name]
        assert params, f"Recipe.{name} has no `cuvee train` flag"
        (param,) = params
        assert flag_name(name) in param.opts, (name, param.opts)
        assert field.description, f"Recipe.{name} has no description for its flag's help"
        assert flag_name(name) in out and _flat(field.description) in _flat(out)


def test_the_old_train_flag_names_still_work() -> None:
    """The 23 flags `cuvee train` had by hand, README and scripts use them."""
    old = "base data name method epochs max-steps time-budget lr seq-len batch-size grad-accum"
    old += " lora-r lora-alpha lora-targets eval-split augment seed precision train-on-prompt"
    old += " no-packing merge author report-to"
    train = COMMAND_TREE[("train",)]
    names = {o for p in train.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))}
    assert {f"--{f}" for f in old.split()} <= names


def test_unset_flags_leave_the_recipe_alone() -> None:
    assert recipe_overrides({name: None for name in Recipe.model_fields}) == {}
    assert recipe_overrides({"data": (), "packing": False}) == {"packing": False}


def _launch_recipe(capsys, *args: str) -> dict:
    """The recipe `cuvee train ... --launcher torchrun` resolves and writes (nothing trains)."""
    code, out, err = run_cli(
        capsys, "train", *args, "--launcher", "torchrun", "--gpus", "1", "--json"
    )
    assert code == 0, err
    return yaml.safe_load(Path(json.loads(out)["files"]["recipe"]).read_text())


def test_a_flag_overrides_the_recipe_file_which_overrides_the_default(
    capsys, tmp_path: Path
) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(
        "name: mine\ndata: [starter]\nlr: 0.001\nseq_len: 64\nmerge: true\n"
        "lora_targets: [q_proj]\nwarmup_ratio: 0.2\n"
    )
    flags = ["--lr", "5e-4", "--no-packing", "--weight-decay", "0.1", "--no-train-turn-tokens"]
    flags += ["--lora-targets", "k_proj,v_proj", "--lora-targets", "o_proj"]
    flags += ["--author", "A", "--authors", "B", "--description", "a test"]
    resolved = _launch_recipe(capsys, str(recipe), *flags)
    assert resolved["lr"] == 5e-4  # the flag over the file
    assert resolved["seq_len"] == 64 and resolved["warmup_ratio"] == 0.2  # the file, no flag
    assert resolved["merge"] is True  # a bool flag not given leaves the file's value
    assert resolved["epochs"] == Recipe().epochs  # neither: the default
    assert resolved["packing"] is False and resolved["train_turn_tokens"] is False
    assert resolved["weight_decay"] == 0.1 and resolved["description"] == "a test"
    assert resolved["lora_targets"] == ["k_proj", "v_proj", "o_proj"]
    assert resolved["authors"] == ["A", "B"]

    resolved = _launch_recipe(capsys, str(recipe), "--no-merge", "--data", "starter")
    assert resolved["merge"] is False and resolved["lr"] == 0.001 and resolved["packing"] is True


def test_a_knob_out_of_its_bounds_fails_at_the_flag(capsys) -> None:
    code, _, err = run_cli(capsys, "train", "--lr", "0", "--name", "x", "--data", "starter")
    assert code == 2 and "--lr" in err
    code, _, err = run_cli(capsys, "train", "--augment", "5", "--name", "x")
    assert code == 2 and "--augment" in err
