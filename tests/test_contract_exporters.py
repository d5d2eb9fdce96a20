"""The exporter contract: the same checks over every format in ``cuvee.export.formats.FORMATS``,
each of its quantizations, and ``adapter_only`` where the format offers it, so a format
registered later is checked without a line added here.

What every export must do: write its file or directory at the path it reports, record it in the
model's manifest with its size and digests (so ``find_export`` finds it), refuse to overwrite
it without ``force`` (changing nothing), replace it with ``force``, name the accepted
quantizations when given another, and leave nothing behind when its writer fails midway.

The source is a tiny LoRA fine-tune of a tiny random Gemma 3 (its adapter trained without the
turn-token rows, so it also exports as a llama.cpp LoRA file). It is trained once per module;
each case exports once into its own copy of that store, and the checks of a case share it."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from pathlib import Path

import pytest

from cuvee.config import load_settings
from cuvee.errors import ConfigError
from cuvee.export.formats import FORMATS, default_path, export, find_export
from cuvee.export.source import ExportSource
from cuvee.progress import SilentReporter
from cuvee.store import ModelStore, sha256_file
from helpers import store_tiny, write_data

NAME = "ft"  # the fine-tune every case exports


@dataclasses.dataclass(frozen=True)
class Case:
    fmt: str
    quant: str | None  # None: the format's default
    adapter_only: bool = False

    @property
    def id(self) -> str:
        parts = [self.fmt, *([self.quant] if self.quant else [])]
        return "-".join(parts + ["lora"] * self.adapter_only)

    @property
    def recorded_quant(self) -> str | None:
        quants = FORMATS[self.fmt].quants
        return self.quant or (quants[0] if quants else None)


CASES = [Case(name, quant) for name, fmt in FORMATS.items() for quant in fmt.quants or (None,)]
CASES += [Case(name, None, adapter_only=True) for name, fmt in FORMATS.items() if fmt.adapter_only]

# (check, case id) -> a bug the check found, reported to the exporters' owner.
# (check, case id) -> why it fails today; an entry makes that case a strict xfail, so fixing
# the bug makes the run fail until the entry goes. Empty: none known.
BUGS: dict[tuple[str, str], str] = {}


def over_cases(check: str, cases: list[Case] = CASES):
    """Parametrize a check over export cases (the ``exported`` fixture's), marking known bugs."""
    params = []
    for case in cases:
        reason = BUGS.get((check, case.id))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(case, marks=marks, id=case.id))
    return pytest.mark.parametrize("exported", params, indirect=True)


# One case per format, its default quantization: for the checks of the format as a whole.
DEFAULT_CASES = [Case(name, (fmt.quants or (None,))[0]) for name, fmt in FORMATS.items()]


def run_export(settings, store, case: Case, **kw) -> dict:
    return export(
        settings,
        store,
        NAME,
        case.fmt,
        quant=case.quant,
        adapter_only=case.adapter_only,
        reporter=SilentReporter(),
        **kw,
    )


@contextlib.contextmanager
def home_env(home: Path, cache: Path):
    """What conftest's ``isolated_home`` sets for a test, for module-scoped set-up."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUVEE_HOME", str(home))
        mp.setenv("CUVEE_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("CUVEE_TRAIN_COMPILE", "off")
        mp.delenv("CUVEE_ENGINE_REPACK", raising=False)
        mp.delenv("CUVEE_CONFIG", raising=False)
        yield


@pytest.fixture(scope="module")
def trained_home(tiny_spm_gemma_dir: Path, tmp_path_factory, machine_cache: Path) -> Path:
    """A CUVEE_HOME holding the tiny base "tg" and its LoRA fine-tune "ft"."""
    from cuvee.train.loop import train
    from cuvee.train.recipe import Recipe

    root = tmp_path_factory.mktemp("contract-exporters")
    home = root / "home"
    with home_env(home, machine_cache):
        settings, _ = store_tiny(tiny_spm_gemma_dir, name="tg")
        data = write_data(root / "d.jsonl", licence="CC-BY-4.0")
        recipe = Recipe(
            base="tg",
            data=[str(data)],
            name=NAME,
            seq_len=48,
            batch_size=4,
            lr=0.05,
            max_steps=2,
            eval_split="none",
            precision="fp32",
            train_turn_tokens=False,
        )
        train(settings, recipe)
    return home


@dataclasses.dataclass
class Exported:
    case: Case
    settings: object
    store: ModelStore
    entry: dict  # what the first export returned

    @property
    def path(self) -> Path:
        return Path(self.entry["path"])

    def records(self) -> list[dict]:
        return [e for e in self.store.get(NAME).manifest.exports if e["path"] == str(self.path)]


@pytest.fixture(scope="module")
def exported(request, trained_home: Path, tmp_path_factory, machine_cache: Path) -> Exported:
    """The case exported once to its default path, in a copy of the trained store. The checks
    sharing it leave it as they found it: one intact export, recorded once."""
    case: Case = request.param
    home = tmp_path_factory.mktemp(f"export-{case.id}") / "home"
    shutil.copytree(trained_home, home)
    with home_env(home, machine_cache):
        settings = load_settings()
        store = ModelStore(settings.models_dir)
        entry = run_export(settings, store, case)
    return Exported(case, settings, store, entry)


@pytest.fixture
def fresh_store(trained_home: Path, isolated_home: Path):
    """A copy of the trained store as this test's CUVEE_HOME, for checks that export nothing."""
    shutil.copytree(trained_home, isolated_home)
    settings = load_settings()
    return settings, ModelStore(settings.models_dir)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every byte of an export (a file, or a directory's files by relative path)."""
    if path.is_file():
        return {"": path.read_bytes()}
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in files}


def digests(path: Path) -> dict:
    """What the manifest records of an export, computed from what is on disk."""
    if path.is_file():
        return {"sha256": sha256_file(path), "size": path.stat().st_size}
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {
        "size": sum(p.stat().st_size for p in files),
        "files": {p.relative_to(path).as_posix(): sha256_file(p) for p in files},
    }


def leftovers(directory: Path, name: str) -> list[Path]:
    """Temporary directories an export to ``directory / name`` left beside it."""
    return [p for p in directory.iterdir() if p.name.startswith(f".{name}.")]


# -- the checks -------------------------------------------------------------------------------


@over_cases("written")
def test_the_export_is_at_the_reported_path_and_recorded_with_its_size(exported) -> None:
    case, path = exported.case, exported.path
    fmt = FORMATS[case.fmt]
    assert path.parent == exported.settings.home / "exports" / NAME
    if fmt.suffix:
        assert path.is_file() and path.name.endswith(fmt.suffix)
    else:
        assert path.is_dir() and any(path.iterdir())
    (record,) = exported.records()
    on_disk = digests(path)
    assert record["size"] == on_disk["size"] > 0
    assert {k: record.get(k) for k in on_disk} == on_disk
    assert record["format"] == case.fmt
    assert record["quantization"] == case.recorded_quant
    assert record["adapter_only"] == case.adapter_only
    assert not leftovers(path.parent, path.name)


@over_cases("find_export")
def test_find_export_finds_the_recorded_export(exported) -> None:
    case = exported.case
    stored = exported.store.get(NAME)
    found = find_export(stored, case.fmt, case.recorded_quant, adapter_only=case.adapter_only)
    assert found == exported.path
    assert find_export(stored, case.fmt, adapter_only=case.adapter_only) == exported.path


@over_cases("force")
def test_a_second_export_is_refused_without_force_and_replaces_with_it(exported) -> None:
    settings, store, path = exported.settings, exported.store, exported.path
    before, manifest = snapshot(path), store.get(NAME).manifest.exports
    with pytest.raises(ConfigError, match="already exists") as err:
        run_export(settings, store, exported.case)
    assert str(path) in err.value.message and "--force" in (err.value.hint or "")
    assert snapshot(path) == before and store.get(NAME).manifest.exports == manifest
    # spoil it, so a replacement shows: force writes the export anew and records it once
    if path.is_file():
        with path.open("ab") as fh:
            fh.write(b"spoilt")
    else:
        (path / "spoilt").write_bytes(b"spoilt")
    entry = run_export(settings, store, exported.case, force=True)
    assert Path(entry["path"]) == path
    assert snapshot(path).keys() == before.keys()  # the spoilt file is gone
    (record,) = exported.records()
    assert record == entry and {k: record.get(k) for k in digests(path)} == digests(path)


@over_cases("failure", DEFAULT_CASES)
def test_an_export_failing_midway_leaves_nothing_behind(
    exported, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The format's writer writes part of its output, then fails: a new target is not created,
    an existing export (replaced with force) stays as it was, the manifest is unchanged and no
    temporary directory is left."""
    case, settings, store, path = exported.case, exported.settings, exported.store, exported.path
    fmt = FORMATS[case.fmt]

    def broken(source, out: Path, quant, adapter_only, reporter):
        if fmt.suffix:
            out.write_bytes(b"half an export")
        else:
            out.mkdir(parents=True)
            (out / "part").write_bytes(b"half an export")
        raise RuntimeError("the writer broke")

    monkeypatch.setitem(FORMATS, case.fmt, dataclasses.replace(fmt, write=broken))
    manifest, before = store.get(NAME).manifest.exports, snapshot(path)
    target = tmp_path / f"new{fmt.suffix}"
    with pytest.raises(RuntimeError, match="the writer broke"):
        run_export(settings, store, case, out=target)
    assert not target.exists() and not leftovers(tmp_path, target.name)
    with pytest.raises(RuntimeError, match="the writer broke"):
        run_export(settings, store, case, force=True)
    assert snapshot(path) == before and not leftovers(path.parent, path.name)
    assert store.get(NAME).manifest.exports == manifest


@over_cases("default_path")
def test_no_two_exports_of_a_model_share_a_default_path(exported) -> None:
    """Each (format, quantization, adapter-only) case has its own default path, so exporting
    one never refuses, or with force deletes, another."""
    settings, store, case = exported.settings, exported.store, exported.case
    source = ExportSource(store, store.get(NAME))

    def default(c: Case) -> Path:
        return default_path(settings, source, FORMATS[c.fmt], c.recorded_quant, c.adapter_only)

    assert default(case) == exported.path
    clashes = [c.id for c in CASES if c != case and default(c) == default(case)]
    assert not clashes, f"{case.id} shares its default path with {clashes}"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_an_unknown_quantization_is_a_config_error_naming_the_accepted_ones(
    fmt: str, fresh_store
) -> None:
    settings, store = fresh_store
    with pytest.raises(ConfigError) as err:
        run_export(settings, store, Case(fmt, "q3_bogus"))
    assert "q3_bogus" in err.value.message and fmt in err.value.message
    quants = FORMATS[fmt].quants
    assert all(q in (err.value.hint or "") for q in quants), err.value.hint
    assert not (settings.home / "exports").exists()
    assert store.get(NAME).manifest.exports == []


@pytest.mark.parametrize("fmt", [name for name, f in FORMATS.items() if not f.adapter_only])
def test_adapter_only_is_refused_where_the_format_does_not_offer_it(fmt: str, fresh_store) -> None:
    settings, store = fresh_store
    with pytest.raises(ConfigError, match="adapter-only"):
        run_export(settings, store, Case(fmt, None, adapter_only=True))
    assert not (settings.home / "exports").exists()
    assert store.get(NAME).manifest.exports == []
