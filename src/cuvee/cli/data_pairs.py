"""`cuvee data pairs`: preference pairs from a stored model's own answers, scored by checks
that need no judge, or from `cuvee data augment` variants (cuvee.eval.preference_pairs does the
work; this module is its command line)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cuvee.cli.output import print_json, read_valid
from cuvee.data.formats import FORMATS
from cuvee.eval.preference_pairs import (
    DEFAULT_MARGIN,
    DEFAULT_MAX_TOKENS,
    DEFAULT_SAMPLES,
    DEFAULT_TEMPERATURE,
)

if TYPE_CHECKING:
    from cuvee.config import Settings

FORMAT_CHOICES = list(FORMATS)


def _checks_help() -> str:
    from cuvee.eval.verifiers import VERIFIERS

    return "\n".join(f"  {v.name:<12} {v.description}" for v in VERIFIERS.values())


def _check_names() -> list[str]:
    from cuvee.eval.verifiers import VERIFIERS

    return list(VERIFIERS)


@click.command(
    "pairs",
    help=f"""Build preference pairs from a model's own answers, scored by checks that need no
judge.

The model answers each prompt of --data (any instruction format; a record's last assistant turn
is its reference answer) -k times, seeded; every answer is scored by the checks that apply
to its prompt (each in [0, 1]):

\b
{_checks_help()}

The best and the worst answer of a prompt become a pair (openai-pairs JSONL, metadata naming
the checks that decided, the scores, the model and the source file:line) when their totals
differ by --margin or more. --kto also writes every answer as a KTO record, desirable when it
passed all its checks. With --from-augment, no model runs: each `cuvee data augment` variant
becomes a pair (rewritten answer chosen, original rejected) where the check confirms that the
original fails the added constraint. With --with-reference, a record's own answer joins the
model's as one more candidate: where it wins, the pair teaches the data's answer over the
model's (self-play fine-tuning); -k 1 then suffices. The output's sidecar FILE.cuvee.yaml
carries the input's licence and the model's name, licence and lineage. Held-out records are
never used.

Example: cuvee data pairs --model quickstart --data aug.jsonl -k 4 -o pairs.jsonl""",
)
@click.option("--model", help="Stored model (or .gguf file) that answers.")
@click.option(
    "--data", "data_file", type=click.Path(path_type=Path), required=True, help="Prompts file."
)
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), help="Input format (detected).")
@click.option(
    "-k", "--samples", "k", default=DEFAULT_SAMPLES, show_default=True, help="Answers per prompt."
)
@click.option(
    "--temperature", default=DEFAULT_TEMPERATURE, show_default=True, help="Sampling temperature."
)
@click.option(
    "--max-tokens", default=DEFAULT_MAX_TOKENS, show_default=True, help="Tokens per answer at most."
)
@click.option("--limit", type=int, help="Use the first N prompts.")
@click.option("--seed", default=0, show_default=True, help="Sample j of each prompt uses seed*k+j.")
@click.option(
    "--margin",
    default=DEFAULT_MARGIN,
    show_default=True,
    help="Keep a pair when the totals differ by this much.",
)
@click.option(
    "--max-length-ratio",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Drop a pair whose chosen answer has more than this times the rejected one's words "
    "(+3): DPO learns length from pairs whose better answer is also the longer. 0: keep all.",
)
@click.option(
    "--check",
    "checks",
    multiple=True,
    type=click.Choice(_check_names()),
    help="Score with these checks only (repeatable); default all.",
)
@click.option(
    "--from-augment",
    is_flag=True,
    help="Pairs from `data augment` variants and their originals; no model.",
)
@click.option(
    "--with-reference",
    is_flag=True,
    help="The record's own answer is a candidate too, chosen among equals.",
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="Pairs JSONL to write."
)
@click.option("--kto", "kto_output", type=click.Path(path_type=Path), help="KTO JSONL to write.")
@click.option(
    "--licence", "--license", "licence", help="Licence id of the input (overrides its sidecar)."
)
@click.option("--json", "json_output", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def pairs(
    settings: Settings,
    model: str | None,
    data_file: Path,
    fmt: str | None,
    k: int,
    temperature: float,
    max_tokens: int,
    limit: int | None,
    seed: int,
    margin: float,
    max_length_ratio: float,
    checks: tuple[str, ...],
    from_augment: bool,
    with_reference: bool,
    output: Path,
    kto_output: Path | None,
    licence: str | None,
    json_output: bool,
) -> None:
    from cuvee.cli.output import reporter_for
    from cuvee.data.validate import read_declaration
    from cuvee.data.writers import write_rows, write_sidecar
    from cuvee.errors import DataError
    from cuvee.eval import preference_pairs as pp
    from cuvee.eval.verifiers import select_verifiers

    def bad(message: str, param: str) -> click.BadParameter:
        return click.BadParameter(message, param_hint=param)

    if from_augment == (model is not None):
        raise click.UsageError(
            "give --model (sample a model's answers) or --from-augment (pairs from augmented "
            "records), one of the two"
        )
    if from_augment and with_reference:
        raise click.UsageError("--with-reference needs --model: augmented pairs have no samples")
    if not from_augment:
        if k < (1 if with_reference else 2):
            raise bad(
                f"{k}: a pair needs two answers to a prompt (-k 2 or more; -k 1 with "
                "--with-reference, the record's answer being the second)",
                "-k/--samples",
            )
        if temperature <= 0:
            raise bad("answers drawn at temperature 0 are all the same", "--temperature")
        if max_tokens < 1:
            raise bad("must be at least 1", "--max-tokens")
    if limit is not None and limit < 1:
        raise bad("must be at least 1", "--limit")
    if margin <= 0:
        raise bad("must be above 0 (equal totals say nothing)", "--margin")
    outputs = [output, *([kto_output] if kto_output else [])]
    if any(p.resolve() == data_file.resolve() for p in outputs) or output == kto_output:
        raise bad("the outputs must differ from each other and from --data", "-o/--kto")

    result = read_valid(data_file, fmt)
    declaration = read_declaration(data_file, licence)
    summary = pp.PairsSummary()
    drops: Counter[str] = Counter()
    lineage = None
    if from_augment:
        kept, kto = pp.augment_pairs(result.records, data_file, summary, drops, limit)
        if summary.prompts == 0:
            raise DataError(
                f"{data_file}: no augmented records (metadata.constraint) to make pairs from",
                hint=f"make them with `cuvee data augment {data_file} -o AUG.jsonl`",
            )
    else:
        cases = pp.prompt_cases(result.records, summary)[:limit]
        if not cases:
            raise DataError(f"{data_file}: no prompts (records with a user turn) to answer")
        from cuvee.eval.backends import StoreBackend

        reporter = reporter_for(json_output)
        backend = StoreBackend(settings, model)
        try:
            identity = backend.prepare(reporter)  # an unknown model fails before any work
            lineage = pp.model_lineage(backend, identity)
            kept, kto = pp.pairs_from_model(
                backend,
                cases,
                select_verifiers(list(checks)),
                k=k,
                temperature=temperature,
                max_tokens=max_tokens,
                seed=seed,
                margin=margin,
                summary=summary,
                reporter=reporter,
                with_reference=with_reference,
            )
        finally:
            backend.close()

    if max_length_ratio:
        kept = pp.length_balanced(kept, max_length_ratio, summary)
    declared = declaration.declared_by != "none"
    made_by = f"answers of model {model}" if model else "cuvee data augment variants"
    source = f"cuvee data pairs from {data_file.name} ({made_by})"
    if declaration.source:
        source += f"; prompts from: {declaration.source}"
    written = {}
    for path, rows in ((output, kept), *([(kto_output, kto)] if kto_output else [])):
        written[str(path)] = write_rows(rows, path)
        write_sidecar(
            path,
            licence=declaration.licence.id if declared else None,
            authors=declaration.authors,
            source=source,
            model=lineage,
        )
    report = {
        **summary.to_json(),
        **({"dropped_augment": dict(drops)} if from_augment else {}),
        "model": lineage,
        "licence": declaration.licence.id if declared else None,
        "written": written,
    }
    if json_output:
        print_json(report)
    else:
        _print_pairs_summary(report, k if not from_augment else None)
    if not kept:
        hint = "" if from_augment else ": a lower --margin, a larger -k or a higher --temperature"
        click.echo(f"warning: no pair kept; {output} is empty{hint}", err=True)


def _print_pairs_summary(report: dict, k: int | None) -> None:
    echo = click.echo
    per = f" ({k} each)" if k else ""
    echo(f"prompts:    {report['prompts']}, {report['samples']} answers{per}")
    if report["sampling_seconds"]:
        seconds = report["sampling_seconds"]
        echo(
            f"sampling:   {report['tokens']} tokens in {seconds:.0f} s "
            f"({report['tokens'] / seconds:.1f} tokens/s)"
        )
    augmented = report.get("dropped_augment")
    tie = " (the original follows the constraint too)" if augmented is not None else ""
    echo(
        f"pairs:      {report['pairs']} kept, {report['dropped']['tie']} dropped for a tie{tie}, "
        f"{report['dropped']['too_few_answers']} with too few distinct answers"
        + (
            f", {report['dropped']['longer_chosen']} with a much longer chosen answer"
            if report["dropped"]["longer_chosen"]
            else ""
        )
    )
    own = report.get("reference_answers")
    if own:
        echo(
            f"reference:  {own['candidates']} of the data's answers scored, "
            f"{own.get('chosen', 0)} chosen and {own.get('rejected', 0)} rejected in a pair"
        )
    if report["empty_answers"]:
        echo(f"empty:      {report['empty_answers']} answers (in no pair)")
    for reason, n in (augmented or {}).items():
        if reason == "original_passes":
            continue
        echo(f"dropped:    {n} {reason.replace('_', ' ')}")
    if report["skipped_records"]:
        echo("skipped:    " + ", ".join(f"{n} {w}" for w, n in report["skipped_records"].items()))
    echo("checks:     scored prompts / decided pairs")
    for name, counts in report["checkers"].items():
        echo(f"  {name:<12} {counts['prompts']:>6} {counts['decided']:>6}")
    kto = report["kto"]
    echo(f"kto:        {kto['desirable']} desirable, {kto['undesirable']} undesirable")
    model = report["model"]
    if model:
        echo(f"model:      {model['name']} (licence {model.get('licence') or 'unknown'})")
        if model.get("commercial_use") is False:
            echo("note: the answers come from a non-commercial model", err=True)
    echo(f"licence:    {report['licence'] or 'not declared'}")
    for path, n in report["written"].items():
        echo(f"wrote {n} records to {path} (licence in {path}.cuvee.yaml)")
