"""`cuvee docs`: document collections for grounded answers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cuvee.cli.output import print_json, reporter_for

if TYPE_CHECKING:
    from cuvee.config import Settings


def _backend(settings: Settings, reporter=None):
    from cuvee.docs.embedders import open_backend

    if reporter is not None:
        reporter.step("loading the embedding model")
    return open_backend(settings.embedding_model)


@click.group(
    epilog="""Examples:

\b
  cuvee docs add handbook ./handbook/          # .txt .md .html .pdf .docx, recursive
  cuvee docs sync handbook ./handbook/         # re-index changed files, drop vanished ones
  cuvee docs list
  cuvee ask handbook "How many days of leave do I get?"
"""
)
def docs() -> None:
    """Index private documents into collections that `cuvee ask` answers from."""


def _print_report(name: str, report, as_json: bool) -> None:
    if as_json:
        print_json({"collection": name, **report.as_dict()})
        return
    click.echo(
        f"{name}: {len(report.added)} added, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged, {len(report.removed)} removed, "
        f"{report.chunks} chunks embedded"
        + (f" ({report.chunks / report.embed_seconds:.0f}/s)" if report.embed_seconds else "")
    )
    for skipped in report.skipped:
        click.echo(f"  skipped {skipped['path']}: {skipped['error']}", err=True)


def _ingest(
    settings: Settings, name, paths, sync, skip_errors, chunk_size, overlap, as_json
) -> None:
    from cuvee.docs import chunking, index
    from cuvee.docs.ingest import expand, ingest
    from cuvee.docs.loaders import LOADERS
    from cuvee.errors import DocsError

    index.check_name(name)
    reporter = reporter_for(as_json)
    expand(list(paths))  # a missing path or bad type fails before anything is created
    backend = _backend(settings, reporter)
    created = not index.collection_path(settings.home, name).is_file() and not sync
    if created:
        size = chunk_size or chunking.DEFAULT_SIZE
        overlap = chunking.DEFAULT_OVERLAP if overlap is None else overlap
        try:
            chunking.check_settings(size, overlap)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--chunk-size/--overlap") from exc
        try:
            collection = index.create(
                settings.home, name, backend.identity, backend.dim, size, overlap
            )
        except index.CollectionExists:  # another `docs add` made it a moment ago: join it
            created = False
    if not created:
        collection = index.open_collection(settings.home, name)
        for given, recorded, flag in (
            (chunk_size, collection.chunk_size, "--chunk-size"),
            (overlap, collection.overlap, "--overlap"),
        ):
            if given is not None and given != recorded:
                raise click.UsageError(
                    f"collection {name!r} was created with {flag} {recorded}; {flag} applies "
                    "when a collection is created (make a new one to change it)"
                )
    try:
        report = ingest(
            collection,
            backend,
            list(paths),
            sync=sync,
            skip_errors=skip_errors,
            reporter=reporter,
        )
    except BaseException:
        if created:  # nothing was indexed: leave no empty collection behind
            _remove_if_empty(settings.home, collection)
        raise
    if created and not report.added:
        _remove_if_empty(settings.home, collection)
        raise DocsError(
            f"nothing to index in {', '.join(str(p) for p in paths)} (supported: "
            f"{', '.join(sorted(LOADERS))}); collection {name!r} was not created"
        )
    _print_report(name, report, as_json)


def _remove_if_empty(home: Path, collection) -> None:
    """Remove a collection this command created, unless another process has meanwhile added
    documents to it: their work is not this command's to undo."""
    from cuvee.docs import index

    empty = not collection.documents()
    collection.close()
    if empty:
        index.remove(home, collection.name)


_ADD_OPTIONS = [
    click.argument("name"),
    click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path)),
    click.option("--skip-errors", is_flag=True, help="Skip unreadable files instead of stopping."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON report."),
]


def _add_options(fn):
    for option in reversed(_ADD_OPTIONS):
        fn = option(fn)
    return fn


@docs.command()
@_add_options
@click.option(
    "--chunk-size", type=int, default=None, help="Characters per chunk (new collection) [900]."
)
@click.option("--overlap", type=int, default=None, help="Characters of overlap [150].")
@click.pass_obj
def add(settings: Settings, name, paths, skip_errors, as_json, chunk_size, overlap) -> None:
    """Add files or folders to collection NAME (created if new). Files already indexed with
    the same content are skipped; changed files are re-indexed."""
    _ingest(
        settings,
        name,
        paths,
        False,
        skip_errors,
        chunk_size,
        overlap,
        as_json,
    )


@docs.command()
@_add_options
@click.pass_obj
def sync(settings: Settings, name, paths, skip_errors, as_json) -> None:
    """Make collection NAME match PATHS: new and changed files indexed, unchanged ones
    skipped, documents that vanished from those folders removed."""
    _ingest(settings, name, paths, True, skip_errors, None, None, as_json)


@docs.command("list")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_(settings: Settings, name, as_json) -> None:
    """List collections, or the documents of collection NAME."""
    from cuvee.docs import index

    if name:
        collection = index.open_collection(settings.home, name)
        documents = collection.documents()
        if as_json:
            print_json([d.__dict__ for d in documents])
            return
        for doc in documents:
            click.echo(f"{doc.id:>5}  {doc.chunks:>5} chunks  {doc.title[:40]:<40}  {doc.path}")
        return
    stats = [
        index.open_collection(settings.home, n).stats() for n in index.list_names(settings.home)
    ]
    if as_json:
        print_json(stats)
        return
    if not stats:
        click.echo("no collections yet: cuvee docs add NAME PATH...")
    for s in stats:
        click.echo(
            f"{s['name']:<24} {s['documents']:>6} documents {s['chunks']:>7} chunks  "
            f"{s['embedding_model']}"
        )


@docs.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(settings: Settings, name, as_json) -> None:
    """Show collection NAME: its settings, embedding model and documents."""
    from cuvee.docs import index

    info = index.describe(index.open_collection(settings.home, name))
    if as_json:
        print_json(info)
        return
    for key in ("name", "documents", "chunks", "embedding_model", "chunk_size", "overlap", "path"):
        click.echo(f"{key:<16} {info[key]}")
    for doc in info["documents_list"]:
        click.echo(f"  [{doc['id']}] {doc['title'][:50]} ({doc['chunks']} chunks) {doc['path']}")


@docs.command()
@click.argument("name")
@click.argument("document", required=False)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def rm(settings: Settings, name, document, yes) -> None:
    """Remove collection NAME, or only DOCUMENT (an id, a path or a unique file name) from it."""
    from cuvee.docs import index

    collection = index.open_collection(settings.home, name)
    if document:
        doc = collection.find_document(document)
        collection.apply([], [doc.path])
        click.echo(f"removed {doc.path} from {name}")
        return
    if not yes:
        click.confirm(f"remove collection {name!r} and its index?", abort=True)
    collection.close()
    index.remove(settings.home, name)
    click.echo(f"removed collection {name}")


@docs.command()
@click.argument("name")
@click.pass_obj
def reindex(settings: Settings, name) -> None:
    """Re-embed every chunk of NAME with the configured embedding model (after changing
    CUVEE_EMBEDDING_MODEL)."""
    from cuvee.docs import index
    from cuvee.docs.ingest import reindex as do_reindex

    reporter = reporter_for(False)
    collection = index.open_collection(settings.home, name)
    backend = _backend(settings, reporter)
    count = do_reindex(collection, backend, reporter)
    click.echo(f"{name}: {count} chunks re-embedded with {backend.identity}")


@docs.command("eval")
@click.argument("name")
@click.argument("qa_file", type=click.Path(path_type=Path))
@click.option("--model", default=None, help="Model that writes answers [default chat model].")
@click.option("--k", "k", type=click.IntRange(1, 50), default=5, show_default=True)
@click.option(
    "--split",
    default=None,
    help="Only the questions of this split (the QA file's 'split' label, e.g. heldout).",
)
@click.option(
    "--baselines",
    default="",
    help="Comma-separated baselines scored beside cuvee on the same retrieval: plain (the "
    "model's text unchecked), extractive (the best-overlapping sentence, no model).",
)
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N questions.")
@click.option("--threads", type=int, default=None, help="CPU threads for llama.cpp.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def eval_(
    settings: Settings, name, qa_file, model, k, split, baselines, limit, threads, as_json
) -> None:
    """Score collection NAME on QA_FILE (JSON Lines: question, answers, docs; no answers means
    unanswerable): answer rate, accuracy and precision, abstention precision and recall, the
    right document cited, citation validity, sentences dropped, quoted answers, language,
    retrieval hit@k and MRR; over all questions and per split.

    \b
    Example:
      cuvee docs eval handbook qa.jsonl --split heldout --baselines plain,extractive
    """
    from cuvee.docs import evaluate
    from cuvee.docs.answer import open_for_answers
    from cuvee.docs.baselines import BASELINES
    from cuvee.docs.generate import open_generator

    chosen = tuple(b.strip() for b in baselines.split(",") if b.strip())
    for baseline in chosen:
        if baseline not in BASELINES:
            raise click.BadParameter(
                f"{baseline!r} is not a baseline (known: {', '.join(BASELINES)})",
                param_hint="--baselines",
            )
    items = evaluate.load_qa(qa_file)
    if split is not None:
        items = [i for i in items if i.split == split]
        if not items:
            raise click.BadParameter(f"no question of {qa_file} has split {split!r}")
    items = items[:limit]
    reporter = reporter_for(as_json)
    collection, backend = open_for_answers(settings.home, name, settings.embedding_model, reporter)
    model_name, generate, close = open_generator(settings, model, reporter, threads)
    try:
        metrics, records = evaluate.run(
            collection, backend, items, generate, k=k, reporter=reporter, baselines=chosen
        )
    finally:
        close()
    if as_json:
        print_json(
            {"collection": name, "model": model_name, "metrics": metrics, "questions": records}
        )
        return
    for record in records:
        mark = "ok " if record["correct"] else "ERR"
        click.echo(f"{mark} {record['id']:<18} {record['answer'][:90]}")
    systems = list(metrics)
    for part, figures in metrics["cuvee"].items():
        click.echo(
            f"\n{part}: {figures['questions']} questions ({figures['answerable']} "
            f"answerable), model {model_name}"
        )
        click.echo(f"{'':<28}" + "".join(f"{s:>12}" for s in systems))
        for key in figures:
            if key in ("questions", "answerable", "unanswerable", "k"):
                continue
            row = [metrics[s][part].get(key) for s in systems]
            click.echo(f"{key:<28}" + "".join(f"{_shown(v):>12}" for v in row))


def _shown(value) -> str:
    return "-" if value is None else str(value)
