"""`cuvee ask`: a grounded answer from a document collection, every sentence checked."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from cuvee.cli.output import print_json, reporter_for
from cuvee.docs.verify import DEFAULT_MIN_SUPPORT

if TYPE_CHECKING:
    from cuvee.config import Settings


@click.command(
    epilog="""Examples:

\b
  cuvee ask handbook "How many days of leave do I get?"
  cuvee ask handbook "Quel est le délai de préavis ?" --model my-tune --k 8
  cuvee ask handbook "Who approves expenses?" --json | jq .citations

Only sentences supported by a retrieved passage are shown, each with its citation; when none
is, the answer says the documents do not say."""
)
@click.argument("collection")
@click.argument("question")
@click.option(
    "--model", default=None, help="Model that writes the answer [default chat model, else base]."
)
@click.option(
    "--k",
    "k",
    type=click.IntRange(1, 50),
    default=5,
    show_default=True,
    help="Passages retrieved and given to the model.",
)
@click.option(
    "--min-support",
    type=click.FloatRange(0, 1),
    default=None,
    help=f"Share of a sentence's terms its source must contain [{DEFAULT_MIN_SUPPORT}].",
)
@click.option(
    "--reranker", type=click.Choice(["none", "coverage"]), default="none", show_default=True
)
@click.option(
    "--keep-unsupported",
    is_flag=True,
    help="Keep unsupported sentences, marked [unsupported], instead of dropping them.",
)
@click.option("--threads", type=int, default=None, help="CPU threads for llama.cpp.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def ask(
    settings: Settings,
    collection,
    question,
    model,
    k,
    min_support,
    reranker,
    keep_unsupported,
    threads,
    as_json,
) -> None:
    """Answer QUESTION from COLLECTION with citations checked against the sources."""
    from cuvee.docs import verify as verifying
    from cuvee.docs.answer import ask as do_ask
    from cuvee.docs.answer import open_for_answers, place
    from cuvee.docs.generate import open_generator

    if not question.strip():
        raise click.BadParameter("the question is empty", param_hint="QUESTION")
    reporter = reporter_for(as_json)
    coll, backend = open_for_answers(settings.home, collection, settings.embedding_model)
    name, generate, close = open_generator(settings, model, reporter, threads)
    try:
        result = do_ask(
            coll,
            backend,
            question,
            generate,
            k=k,
            min_support=verifying.DEFAULT_MIN_SUPPORT if min_support is None else min_support,
            reranker=reranker,
            keep_unsupported=keep_unsupported,
            model=name,
        )
    finally:
        close()
    if as_json:
        print_json(result.as_dict())
        return
    click.echo(result.answer)
    if result.citations:
        click.echo()
        for cite in result.citations:
            where = place(cite.title, cite.section)
            quote = " ".join(cite.quote.split())
            click.echo(f"[{cite.n}] {where} ({cite.doc}, chars {cite.start}-{cite.end})")
            click.echo(f'    "{quote[:300]}{"..." if len(quote) > 300 else ""}"')
    dropped = sum(1 for s in result.sentences if s.verdict == "unsupported")
    if dropped and not keep_unsupported:
        click.echo(f"({dropped} unsupported sentence(s) dropped; --json shows them)", err=True)
