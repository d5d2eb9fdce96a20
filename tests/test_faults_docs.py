"""Fault injection on document collections: two writers at once, a server answering while the
collection is re-indexed, and malformed files (a fake PDF, a zip bomb named .docx, bytes that
are not text). The index must stay consistent (SQLite's and FTS5's own checks, every chunk
present once), each failure must be one clear error naming the file or the busy collection,
and a refused file must change nothing."""

from __future__ import annotations

import re
import struct
import subprocess
import threading
import zlib
from pathlib import Path

import pytest

from cuvee.docs import index
from cuvee.docs.ingest import ingest, reindex
from docs_fakes import HashingBackend, copy_sample, split_sample
from helpers import run_cli
from test_faults_kill import CHILD_TIMEOUT_S, DOCS_CHILD, child, index_state, wait_for


def finished(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
    return proc.returncode, err.decode()


def assert_ok_or_busy(code: int, err: str) -> bool:
    """A `docs add` beside another succeeds, or fails with one clear "busy" error; returns
    whether it succeeded."""
    assert "Traceback" not in err, err
    if code == 0:
        return True
    assert code == 1 and "error: collection 'hb' is busy" in err, err
    return False


# -- two writers ----------------------------------------------------------------------------


def test_two_docs_add_at_once_on_a_new_collection_both_land(
    tmp_path: Path, isolated_home: Path
) -> None:
    """Two `cuvee docs add` started together on a collection that does not exist yet (both see
    it missing and both create it; their write transactions are slowed so they overlap): both
    succeed, the collection holds all six documents, each with its chunks once."""
    first, second = split_sample(tmp_path)
    env = {"FAULT_SLOW_WRITE": "0.005"}
    with (
        child(["docs", "add", "hb", str(first)], tmp_path, code=DOCS_CHILD, **env) as one,
        child(["docs", "add", "hb", str(second)], tmp_path, code=DOCS_CHILD, **env) as two,
    ):
        results = [finished(one), finished(two)]
    assert all(assert_ok_or_busy(code, err) for code, err in results), results
    state = index_state(isolated_home / "docs" / "hb.sqlite")
    assert sorted(Path(p).name for p in state) == sorted(
        p.name for p in [*first.iterdir(), *second.iterdir()]
    )


def test_a_writer_that_waits_too_long_says_the_collection_is_busy_and_changes_nothing(
    tmp_path: Path, isolated_home: Path
) -> None:
    """A `docs add` that finds another holding the collection's write lock for longer than it
    may wait (shortened here to 0.2 s; the other keeps its transaction open until the test
    lets it go): exit 1 with "collection 'hb' is busy" and no traceback; the other one's
    documents are all there, and running the refused command again completes."""
    first, second = split_sample(tmp_path)
    database = isolated_home / "docs" / "hb.sqlite"
    with child(["docs", "add", "hb", str(first)], tmp_path, code=DOCS_CHILD) as proc:
        assert finished(proc)[0] == 0
    extra = tmp_path / "extra"
    extra.mkdir()
    for n in range(3):
        (extra / f"note-{n}.md").write_text(f"# Note {n}\n\nThe budget for item {n} is fixed.\n")
    before = index_state(database)
    marker, hold = tmp_path / "writing", tmp_path / "hold"
    hold.touch()
    args = ["docs", "add", "hb", str(second)]
    env = {"FAULT_MARKER": str(marker), "FAULT_HOLD": str(hold)}
    with child(["docs", "add", "hb", str(extra)], tmp_path, code=DOCS_CHILD, **env) as holder:
        assert wait_for(holder, marker.exists)
        with child(args, tmp_path, code=DOCS_CHILD, FAULT_WRITE_WAIT="0.2") as waiter:
            code, err = finished(waiter)
        hold.unlink()
        assert finished(holder)[0] == 0
    assert not assert_ok_or_busy(code, err)
    assert "nothing was changed" in err
    state = index_state(database)
    assert {p: state[p] for p in before} == before
    assert sorted(Path(p).name for p in state if p not in before) == sorted(
        p.name for p in extra.iterdir()
    )
    with child(args, tmp_path, code=DOCS_CHILD) as again:
        assert finished(again)[0] == 0
    assert len(index_state(database)) == len(state) + 3


# -- serving while another writer re-indexes ------------------------------------------------


def test_retrieve_and_rag_answers_stay_whole_while_the_collection_is_reindexed(
    tmp_path: Path, isolated_home: Path
) -> None:
    """`/v1/retrieve` and `rag:hb` chat completions (in-process server, fake engine, scripted
    answerer) while another connection rewrites the collection over and over (a document
    changed and re-indexed, then every chunk re-embedded), with each write transaction slowed
    so requests land inside it: no 5xx, and every hit is a chunk of one whole version of its
    document (its text is that version's text between its offsets)."""
    from test_serve_rag import QUESTION, Served

    folder = copy_sample(tmp_path / "handbook")
    backend = HashingBackend()
    ingest(index.create(isolated_home, "hb", backend.identity, backend.dim), backend, [folder])
    leave = folder / "leave-policy.md"
    versions = [leave.read_text(encoding="utf-8")]
    versions.append(
        versions[0].replace("27 days", "31 days") + "\n## Carry-over\n\nUp to "
        "five unused days of paid annual leave carry over to March.\n"
    )
    texts = {str(p): p.read_text(encoding="utf-8") for p in folder.iterdir()}

    writing = threading.Event()
    done = threading.Event()
    errors: list[BaseException] = []

    def rewrite() -> None:
        writer = index.open_collection(isolated_home, "hb")
        original_execute = writer.db.execute

        class Slowed:  # each statement of a write waits a little, so requests overlap it
            def execute(self, *args):
                writing.set()
                done.wait(0.002)
                return original_execute(*args)

            def __getattr__(self, name):
                return getattr(original_execute.__self__, name)

        try:
            for n in range(6):
                leave.write_text(versions[(n + 1) % 2], encoding="utf-8")
                writer.db = Slowed()
                ingest(writer, backend, [folder])
                reindex(writer, backend)
                writer.db = original_execute.__self__
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()
            writer.close()

    served = Served(isolated_home)
    thread = threading.Thread(target=rewrite, name="reindexer")
    thread.start()
    try:
        assert writing.wait(60)
        answered = 0
        while not done.is_set() or answered < 2:
            r = served.retrieve(collection="hb", query="paid annual leave days", k=5)
            assert r.status_code == 200, r.text
            hits = r.json()["data"]
            assert len({h["chunk_id"] for h in hits}) == len(hits) > 0, r.json()
            for hit in hits:
                candidates = versions if hit["doc"] == str(leave) else [texts[hit["doc"]]]
                assert any(v[hit["start"] : hit["end"]] == hit["text"] for v in candidates), hit
            r = served.chat(messages=[{"role": "user", "content": QUESTION}])
            assert r.status_code == 200, r.text
            answered += 1
    finally:
        done.set()
        thread.join(60)
    assert not errors, errors
    index_state(isolated_home / "docs" / "hb.sqlite")


# -- malformed files ------------------------------------------------------------------------


@pytest.fixture
def hashing(monkeypatch: pytest.MonkeyPatch) -> HashingBackend:
    backend = HashingBackend()
    monkeypatch.setattr("cuvee.docs.embedders.open_backend", lambda spec: backend)
    return backend


def zip_bomb(path: Path, expanded: int = 1 << 30) -> Path:
    """A .docx-shaped zip (content types, relationships) whose word/document.xml inflates to
    ``expanded`` zero bytes from about a megabyte. The deflate stream is built from one 1 MiB
    block flushed so that every block compresses to the same bytes, so nothing of that size is
    ever made here; its CRC is left wrong (a loader that inflated the part would hold all of it
    in memory before it could notice)."""
    block = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    repeated = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    blocks = expanded // len(block)
    bomb = repeated * (blocks - 1) + deflate.compress(block) + deflate.flush()
    content_types = (
        b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
        b'content-types"><Default Extension="xml" ContentType="application/vnd.openxmlformats-'
        b'officedocument.wordprocessingml.document.main+xml"/></Types>'
    )
    rels = (
        b'<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/'
        b'2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/'
        b'officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/>'
        b"</Relationships>"
    )

    def packed(data: bytes) -> tuple[bytes, int, int]:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(), zlib.crc32(data), len(data)

    members = [
        ("[Content_Types].xml", *packed(content_types)),
        ("_rels/.rels", *packed(rels)),
        ("word/document.xml", bomb, 0, expanded),
    ]
    local, central = b"", b""
    for name, data, crc, size in members:
        encoded = name.encode()
        central += (
            struct.pack(
                "<4s6H3L5H2L",
                b"PK\x01\x02",
                20,
                20,
                0,
                8,
                0,
                0x21,
                crc,
                len(data),
                size,
                len(encoded),
                0,
                0,
                0,
                0,
                0,
                len(local),
            )
            + encoded
        )
        local += (
            struct.pack(
                "<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(data), size, len(encoded), 0
            )
            + encoded
            + data
        )
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 3, 3, len(central), len(local), 0)
    path.write_bytes(local + central + end)
    return path


# Bytes that are not text yet decode as Windows-1252 (every byte but its five undefined ones):
# without a check they were indexed as gibberish.
BINARY = bytes(b for b in range(256) if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)) * 16


def collection_snapshot(home: Path) -> tuple[dict[str, int], str]:
    state = index_state(home / "docs" / "hb.sqlite")
    return state, index.open_collection(home, "hb").meta()["version"]


@pytest.mark.parametrize("kind", ["fake-pdf", "zip-bomb-docx", "binary-txt", "not-cp1252-txt"])
def test_a_malformed_file_is_named_and_changes_nothing(
    kind: str, tmp_path: Path, isolated_home: Path, hashing, capsys
) -> None:
    """`cuvee docs add` of a malformed file, alone and inside a folder of good ones, into an
    existing collection and into a new one: exit 1 with an error naming the file and no
    traceback; the existing collection is unchanged (same documents, chunks and version) and
    the new one is not created."""
    code, _, err = run_cli(capsys, "docs", "add", "hb", str(copy_sample(tmp_path / "hb")))
    assert code == 0, err
    before = collection_snapshot(isolated_home)
    folder = copy_sample(tmp_path / "more")
    bad = {
        "fake-pdf": lambda p: p.with_name("report.pdf").write_bytes(b"GIF89a this is no PDF"),
        "zip-bomb-docx": lambda p: zip_bomb(p.with_name("minutes.docx")),
        "binary-txt": lambda p: p.with_name("notes.txt").write_bytes(BINARY),
        "not-cp1252-txt": lambda p: p.with_name("notes.txt").write_bytes(
            "caf\u00e9 ".encode("latin-1") * 50 + b"\x81\x8d\x8f\x90\x9d"
        ),
    }[kind]
    bad(folder / "x")
    (path,) = [p for p in folder.iterdir() if p.stem in ("report", "minutes", "notes")]
    for target in (path, folder):
        for name in ("hb", "fresh"):
            code, _, err = run_cli(capsys, "docs", "add", name, str(target))
            assert code == 1 and "Traceback" not in err, err
            (line,) = [line for line in err.splitlines() if line.startswith("error:")]
            assert str(path) in line, err
            assert collection_snapshot(isolated_home) == before
            assert not (isolated_home / "docs" / "fresh.sqlite").exists()
    if kind == "zip-bomb-docx":
        assert "over the 256 MiB a .docx may hold" in err


# The docs child, telling on exit the peak resident memory of its own program (VmHWM starts
# afresh at exec, where getrusage's maxrss would also count the forked test process).
PEAK_CHILD = (
    "import atexit, re, sys\n"
    "atexit.register(lambda: print('peak-kib', re.search(r'VmHWM:\\s+(\\d+)', "
    "open('/proc/self/status').read()).group(1), file=sys.stderr))\n" + DOCS_CHILD
)


def test_a_zip_bomb_docx_is_refused_in_bounded_memory(tmp_path: Path, isolated_home) -> None:
    """The 1 GiB zip bomb through `cuvee docs add` in a child process: refused by name, and the
    child's peak resident memory stays far below what inflating the part would take."""
    bomb = zip_bomb(tmp_path / "minutes.docx")
    with child(["docs", "add", "hb", str(bomb)], tmp_path, code=PEAK_CHILD) as proc:
        code, err = finished(proc)
    assert code == 1, err
    assert str(bomb) in err and "zip bomb" in err and "Traceback" not in err
    peak_mib = int(re.search(r"peak-kib (\d+)", err).group(1)) / 1024
    assert peak_mib < 400, f"peak memory {peak_mib:.0f} MiB"
