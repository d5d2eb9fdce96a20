"""Test helpers: the CLI driven in-process, a tiny model in the store, data from its words."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

from cuvee.config import load_settings
from cuvee.model_import import add
from cuvee.progress import SilentReporter
from cuvee.store import ModelStore


def fake_catalog_entry(name: str, pip_package: str, obtain, description: str = "tiny"):
    """A catalog entry for a tiny Gemma 3 that ``obtain`` writes (register it with
    ``monkeypatch.setitem(catalog.CATALOG, name, entry)``)."""
    from cuvee import catalog

    return catalog.CatalogEntry(
        name=name,
        description=description,
        architecture="gemma3",
        approx_parameters=1,
        licence="Gemma",
        chat_template="gemma",
        upstream="nobody/tiny",
        pip_package=pip_package,
        obtain=obtain,
    )


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `cuvee ARGS` in-process: (exit code, stdout, stderr)."""
    from cuvee.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


WORDS = ["the", "a", "of", "to", "and", "is", "in", "it", "you", "that", "hello", "world"]


def store_tiny(tiny_dir: Path, name: str = "tiny", licence: str = "MIT"):
    settings = load_settings()
    store = ModelStore(settings.models_dir)
    add(store, tiny_dir, name, SilentReporter(), licence=licence)
    return settings, store


def write_data(
    path: Path,
    n: int = 40,
    seed: int = 0,
    licence: str | None = None,
    authors: list[str] | None = None,
) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9)))
            a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
            fh.write(json.dumps({"instruction": q, "output": f"hello {a}"}) + "\n")
    if licence or authors:
        lines = []
        if licence:
            lines.append(f"licence: {licence}")
        if authors:
            lines.append("authors: [" + ", ".join(authors) + "]")
        path.with_name(path.name + ".cuvee.yaml").write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def uvicorn_in_thread(app):
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the root URL."""
    import threading
    import time

    import uvicorn

    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=uv.run, name="uvicorn-test", daemon=True)
    thread.start()
    for _ in range(600):
        if uv.started or not thread.is_alive():
            break
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


def train_recipe_file(tmp_path: Path, data: Path, **knobs) -> Path:
    """A short LoRA run of the store's tiny model on ``data``, checkpointing every 2 steps,
    written as a recipe YAML for `cuvee train` in a child process; ``knobs`` override."""
    import yaml

    recipe = {
        "base": "tiny",
        "data": [str(data)],
        "name": "tuned",
        "seq_len": 48,
        "batch_size": 2,
        "lr": 0.01,
        "max_steps": 6,
        "epochs": 100,
        "eval_split": "none",
        "save_every": 2,
        "precision": "fp32",
        "seed": 3,
        **knobs,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
