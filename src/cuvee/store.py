"""The model store: one directory per model under ``$CUVEE_HOME/models/<name>/`` with a
``cuvee.json`` manifest. A model is registered only once completely written: it is built in a
staging directory and renamed into place, manifest last."""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cuvee.errors import CuveeError, ModelNotFound, StoreError
from cuvee.licences import Licence

MANIFEST = "cuvee.json"
SCHEMA_VERSION = 1
# A colon is kept free for NAME:ADAPTER ids in the server; a slash would escape the store.
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

ModelKind = Literal["base", "fine-tuned", "adapter"]


class FileEntry(BaseModel):
    """One file of a model, relative to its directory."""

    path: str
    sha256: str
    size: int
    role: str = "other"


class Source(BaseModel):
    """Where a model came from."""

    type: Literal["catalog", "local", "training"]
    package: str | None = None
    package_version: str | None = None
    path: str | None = None
    original_file: str | None = None
    original_sha256: str | None = None
    upstream: str | None = None


class Manifest(BaseModel):
    """What cuvee knows about a stored model; written to ``cuvee.json``."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    name: str
    kind: ModelKind
    architecture: str
    model_type: str | None = None
    parameters: int | None = None
    files: list[FileEntry] = Field(default_factory=list)
    source: Source
    licence: Licence
    chat_template: str
    parent: str | None = None
    created_at: str
    path: str = ""
    description: str = ""
    exports: list[dict[str, Any]] = Field(default_factory=list)

    def file(self, role: str) -> FileEntry | None:
        return next((f for f in self.files if f.role == role), None)


# A write that fails for want of room: the disk is full, a quota is reached, or the file is over
# the size limit of the process (RLIMIT_FSIZE).
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_LOW_SPACE = 1 << 20


def _existing_parent(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def no_space_reason(exc: BaseException, path: Path) -> str | None:
    """Why ``exc``, raised while writing under ``path``, means there was no room to write, or
    None when it does not. Writers in native code (safetensors, torch.save) raise their own
    exception classes, so their text is read for the OS error, and a nearly full disk counts."""
    code = getattr(exc, "errno", None)
    if code not in _NO_SPACE:
        found = re.search(r"os error (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    if code in _NO_SPACE:
        return f"{os.strerror(code).lower()} ({errno.errorcode[code]})"
    try:
        free = shutil.disk_usage(_existing_parent(path)).free
    except OSError:
        return None
    if free < _LOW_SPACE:
        return f"no space left on the device ({free:,} bytes free)"
    return None


def write_failed(
    exc: BaseException, path: Path, what: str, kept: str, *, always: bool = False
) -> CuveeError | None:
    """A clear error for a write of ``what`` to ``path`` that failed for want of space, saying
    what was ``kept``; None when ``exc`` is not a lack of space, unless ``always`` (then the
    exception's own text is the reason)."""
    reason = no_space_reason(exc, path)
    if reason is None:
        if not always:
            return None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CuveeError(
        f"cannot write {what} to {path}: {reason}",
        hint=f"{kept}; free some disk space and run the command again",
    )


def utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """Hash a file in 1 MiB blocks; ``progress`` is told how many bytes each block had."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise StoreError(
            f"invalid model name {name!r}",
            hint="use 1-64 characters: lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return name


def _role_of(rel: str) -> str:
    name = Path(rel).name
    if Path(rel).parts[0] == "adapter" and len(Path(rel).parts) > 1:
        return "adapter"
    if name.endswith(".gguf"):
        return "gguf"
    if name.endswith(".safetensors"):
        return "weights"
    if name in {"config.json", "generation_config.json"}:
        return "config"
    if name.startswith(("tokenizer", "special_tokens_map")) or name.endswith(".model"):
        return "tokenizer"
    if name == "chat_template.jinja":
        return "chat_template"
    return "other"


def describe_files(root: Path, progress: Callable[[int], None] | None = None) -> list[FileEntry]:
    """sha256, size and role of every file under ``root`` but the manifest, sorted by path."""
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        entries.append(
            FileEntry(
                path=rel,
                sha256=sha256_file(path, progress),
                size=path.stat().st_size,
                role=_role_of(rel),
            )
        )
    return entries


class StoredModel(BaseModel):
    """A model found in the store: its directory and manifest."""

    path: Path
    manifest: Manifest


class ModelStore:
    """Models under ``root``; all writes go through :meth:`stage`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def staging_root(self) -> Path:
        # Inside the models' parent so the final rename stays on one filesystem (atomic).
        return self.root.parent / ".staging"

    def _scratch(self, label: str) -> Path:
        """A new directory under the staging root, named after this process so that what a
        killed process left there can be told from what a running one is writing."""
        self.staging_root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}.{label}-", dir=self.staging_root))

    def clean_abandoned(self) -> int:
        """Delete what killed processes left in the staging root (a half-copied model can be
        gigabytes); returns how many were removed. Directories of live processes are kept."""
        if not self.staging_root.is_dir():
            return 0
        removed = 0
        for path in self.staging_root.iterdir():
            pid = path.name.split(".", 1)[0]
            if pid.isdigit() and process_alive(int(pid)):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        return removed

    def model_dir(self, name: str) -> Path:
        return self.root / check_name(name)

    def exists(self, name: str) -> bool:
        return (self.model_dir(name) / MANIFEST).is_file()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def get(self, name: str) -> StoredModel:
        directory = self.model_dir(name)
        if not directory.is_dir():
            close = difflib.get_close_matches(name, self.names(), n=3)
            hint = (
                f"did you mean {', '.join(close)}?"
                if close
                else "see `cuvee models list`; base models are added with `cuvee models pull NAME`"
            )
            raise ModelNotFound(f"no model named {name!r} in the store ({self.root})", hint=hint)
        return StoredModel(path=directory, manifest=self.read_manifest(directory))

    def read_manifest(self, directory: Path) -> Manifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise StoreError(
                f"store directory {directory} has no {MANIFEST} manifest",
                hint=f"not a complete model; remove it with `cuvee models rm {directory.name}`",
            )
        try:
            return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
        except (ValidationError, ValueError) as exc:
            first = str(exc).splitlines()[0:3]
            raise StoreError(
                f"{path}: manifest is unreadable: {' '.join(first)}",
                hint=f"remove the model with `cuvee models rm {directory.name}` and add it again",
            ) from exc

    def list(self) -> tuple[list[StoredModel], list[tuple[str, str]]]:
        """Every readable model, and (name, problem) for each broken directory."""
        models, broken = [], []
        for name in self.names():
            try:
                models.append(self.get(name))
            except StoreError as exc:
                broken.append((name, exc.message))
        return models, broken

    def remove(self, name: str) -> Path:
        directory = self.model_dir(name)
        if not directory.is_dir():
            self.get(name)  # raises ModelNotFound with suggestions
        # Rename first so a crash mid-delete never leaves a half model under its name.
        trash = self._scratch(f"rm-{name}")
        os.replace(directory, trash / name)
        shutil.rmtree(trash, ignore_errors=True)
        return directory

    @contextlib.contextmanager
    def stage(self, name: str, *, replace: bool = False) -> Iterator[Path]:
        """Yield an empty staging directory; on clean exit it must hold ``cuvee.json`` and is
        renamed to the model's directory. On any error it is deleted and nothing is registered."""
        target = self.model_dir(name)
        if target.exists() and not replace:
            raise self._taken(name, target)
        self.clean_abandoned()
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self._scratch(name)
        try:
            yield staging
            if not (staging / MANIFEST).is_file():
                raise StoreError(f"internal error: staged model {name!r} has no manifest")
            if target.exists() and not replace:
                raise self._taken(name, target)  # another process finished first
            if target.exists():
                old = self._scratch(f"old-{name}")
                os.replace(target, old / name)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(staging, target)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, Exception) and not isinstance(exc, CuveeError):
                full = write_failed(exc, staging, f"model {name!r}", "nothing was registered")
                if full is not None:
                    raise full from exc
            raise

    @staticmethod
    def _taken(name: str, target: Path) -> StoreError:
        if not (target / MANIFEST).is_file():
            return StoreError(
                f"{target} exists but holds no complete model (no {MANIFEST})",
                hint=f"remove it with `cuvee models rm {name}`, then try again",
            )
        return StoreError(
            f"a model named {name!r} is already in the store",
            hint=f"choose another --name, or remove it first with `cuvee models rm {name}`",
        )

    def clean_staging(self) -> int:
        """Delete leftovers of interrupted writes; returns how many were removed."""
        if not self.staging_root.is_dir():
            return 0
        leftovers = list(self.staging_root.iterdir())
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return len(leftovers)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write ``cuvee.json`` atomically (temporary file, then rename): a failed or killed write
    leaves the previous manifest as it was."""
    data = manifest.model_dump(mode="json")
    tmp = directory / f".{MANIFEST}.tmp"
    try:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, directory / MANIFEST)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        full = write_failed(exc, directory / MANIFEST, "the manifest", "the manifest is unchanged")
        if full is not None:
            raise full from exc
        raise


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` is running (this one included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def verify_files(model: StoredModel) -> list[str]:
    """Problems found re-hashing a stored model's files (empty when all match)."""
    problems = []
    for entry in model.manifest.files:
        path = model.path / entry.path
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
        elif path.stat().st_size != entry.size:
            problems.append(f"{entry.path}: size {path.stat().st_size}, manifest says {entry.size}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{entry.path}: sha256 differs from the manifest")
    return problems
