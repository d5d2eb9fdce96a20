"""Fault injection: the disk fills up while a checkpoint, an export or a model is written.

Two ways of filling it: the writer raises ``OSError(ENOSPC)`` after writing part of its file
(monkeypatched in-process), or a real file size limit (``RLIMIT_FSIZE`` lowered for this
process around one write, SIGXFSZ ignored) makes the native writers (safetensors, torch.save)
fail the way they do on a full disk. Each time: one clear error naming the path and the lack of
space, a non-zero exit with no traceback from the CLI, no partial file left behind, and the
previous checkpoint or store entry intact."""

from __future__ import annotations

import contextlib
import errno
import json
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cuvee.errors import CuveeError
from cuvee.store import sha256_file, verify_files
from cuvee.train import checkpoint as ckpt
from helpers import run_cli, store_tiny, train_recipe_file, write_data


def no_space(path: object) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def assert_clear_disk_error(code: int, err: str, path_part: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: cannot write") and path_part in line, err
    assert "no space left on device (ENOSPC)" in line, err


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG in this process while inside."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


# -- checkpoints ----------------------------------------------------------------------------


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one_and_resume_works(
    tiny_gemma_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """ENOSPC half-way through the second checkpoint of `cuvee train`: exit 1 with one line
    naming the checkpoint's path and the lack of space, no model registered, no partial
    checkpoint left, the first checkpoint whole, and `cuvee train --resume` finishes the run
    from it."""
    from cuvee.train.loop import find_run

    settings, store = store_tiny(tiny_gemma_dir)
    recipe = train_recipe_file(tmp_path, write_data(tmp_path / "train.jsonl"))
    real_save = torch.save

    def save_until_full(obj, path, *args, **kwargs):
        if "step-000004" in str(path):
            Path(path).write_bytes(b"\0" * 1000)  # part of the file made it to disk
            raise no_space(path)
        return real_save(obj, path, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(torch, "save", save_until_full)
        code, _, err = run_cli(capsys, "train", str(recipe), "--json")
    assert_clear_disk_error(code, err, "step-000004")
    assert "step-000002 is intact" in err and "--resume" in err
    assert not store.exists("tuned")

    checkpoints = find_run(settings, "tuned") / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step-000002"]
    trainable = set(ckpt.load(checkpoints / "step-000002", set())[1])
    state, _, _ = ckpt.load(checkpoints / "step-000002", trainable)
    assert state["step"] == 2 and len(state["losses"]) == 2

    code, out, err = run_cli(capsys, "train", "--resume", "tuned", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["resumed_at_step"] == 2 and summary["steps"] == 6
    assert store.exists("tuned") and verify_files(store.get("tuned")) == []


def test_a_checkpoint_over_the_file_size_limit_fails_cleanly(tmp_path: Path) -> None:
    """A real EFBIG from safetensors' native writer (RLIMIT_FSIZE below the weights' size):
    a CuveeError naming the path and the errno, the partial directory removed, the previous
    checkpoint still loadable."""
    directory = tmp_path / "checkpoints"
    weights = {"w": torch.randn(64, 64)}
    optimizer = {"state": {0: {"exp_avg": torch.zeros(64, 64)}}, "param_groups": []}
    ckpt.save(directory, 2, weights, optimizer, {"losses": [1.0, 0.9]}, keep=2)

    with file_size_limit(4096), pytest.raises(CuveeError) as failure:
        ckpt.save(directory, 4, {"w": torch.randn(64, 64)}, optimizer, {"losses": []}, keep=2)
    message = str(failure.value)
    assert ".tmp-step-000004" in message and "file too large (EFBIG)" in message
    assert "step-000002 is intact" in message
    assert [p.name for p in directory.iterdir()] == ["step-000002"]
    state, loaded, _ = ckpt.load(directory / "step-000002", {"w"})
    assert state["step"] == 2 and torch.equal(loaded["w"], weights["w"])


# -- exports --------------------------------------------------------------------------------


def test_disk_full_during_an_export_keeps_the_previous_export_and_record(
    tiny_spm_gemma_dir: Path, capsys, monkeypatch
) -> None:
    """ENOSPC half-way through `cuvee export --force` over an earlier export: exit 1 naming the
    path and the lack of space, no temporary file left, the earlier GGUF file and its record in
    the manifest unchanged, and the store still verifies."""
    import gguf

    _, store = store_tiny(tiny_spm_gemma_dir, name="tg")
    args = ["export", "tg", "--format", "gguf", "--quant", "f32", "--json"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    first = json.loads(out)
    before = store.get("tg").manifest.model_dump()

    def write_tensors_until_full(self, *a, **kw):
        self.fout[0].write(b"\0" * 4096)
        raise no_space(self.path)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", write_tensors_until_full)
    code, _, err = run_cli(capsys, *args, "--force")
    assert_clear_disk_error(code, err, "tg-f32.gguf")
    assert "is as it was" in err

    exported = Path(first["path"])
    assert sha256_file(exported) == first["sha256"]
    assert store.get("tg").manifest.model_dump() == before
    assert [p.name for p in exported.parent.iterdir()] == [exported.name]
    assert verify_files(store.get("tg")) == []


# -- models add -----------------------------------------------------------------------------


def test_disk_full_while_adding_a_model_registers_nothing(
    tiny_gemma_dir: Path, capsys, monkeypatch, isolated_home: Path
) -> None:
    """ENOSPC while `cuvee models add` copies the weights: exit 1 naming the staging path and
    the lack of space, no model listed, nothing left in the staging area; with space again the
    same command completes."""
    from cuvee import model_import

    real_copy = model_import._copy_with_progress

    def copy_until_full(src: Path, dst: Path, advance) -> None:
        if src.suffix == ".safetensors":
            dst.write_bytes(src.read_bytes()[:1000])
            raise no_space(dst)
        real_copy(src, dst, advance)

    args = ["models", "add", str(tiny_gemma_dir), "--name", "tiny", "--licence", "MIT"]
    with monkeypatch.context() as patched:
        patched.setattr(model_import, "_copy_with_progress", copy_until_full)
        code, _, err = run_cli(capsys, *args)
    assert_clear_disk_error(code, err, "tiny")
    assert "nothing was registered" in err
    code, out, _ = run_cli(capsys, "models", "list", "--json")
    assert code == 0 and json.loads(out) == []
    staging = isolated_home / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err


# -- collections ----------------------------------------------------------------------------


def test_a_failed_index_write_rolls_back_with_a_clear_error(
    tmp_path: Path, isolated_home: Path
) -> None:
    """The index file cannot grow (RLIMIT_FSIZE at its current size) while `docs add` writes
    three more documents: a DocsError naming the collection and saying nothing was changed,
    no SQLite exception; the index passes its checks with the documents it had, and with room
    again the same add completes."""
    from cuvee.docs import index
    from cuvee.docs.ingest import ingest
    from cuvee.errors import DocsError
    from docs_fakes import HashingBackend, copy_sample
    from test_faults_kill import index_state

    folder = copy_sample(tmp_path / "handbook")
    more = tmp_path / "more"
    more.mkdir()
    for path in sorted(folder.iterdir())[:3]:
        path.rename(more / path.name)
    backend = HashingBackend()
    collection = index.create(isolated_home, "hb", backend.identity, backend.dim)
    ingest(collection, backend, [folder])
    database = isolated_home / "docs" / "hb.sqlite"
    before = index_state(database)

    with file_size_limit(database.stat().st_size), pytest.raises(DocsError) as failure:
        ingest(collection, backend, [more])
    message = str(failure.value)
    assert "cannot write collection 'hb'" in message and "disk refused a write" in message
    assert "nothing was changed" in message
    assert index_state(database) == before
    assert not database.with_name("hb.sqlite-journal").exists()
    ingest(collection, backend, [more])
    assert len(index_state(database)) == len(before) + 3
