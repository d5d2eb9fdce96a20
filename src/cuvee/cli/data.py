"""`cuvee data`: check instruction and preference data like a compiler, augment it with
verifiable constraints, build preference pairs from a model's answers (``pairs``), and write
the bundled starter set. The formats and checks offered are registries
(cuvee.data.formats.FORMATS, cuvee.data.preference.PREFERENCE_FORMATS,
cuvee.data.writers.WRITERS, cuvee.eval.verifiers.VERIFIERS)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cuvee.cli.data_pairs import pairs
from cuvee.cli.output import print_json, read_valid
from cuvee.data.formats import FORMATS
from cuvee.data.preference import PREFERENCE_FORMATS
from cuvee.data.writers import WRITERS

if TYPE_CHECKING:
    from cuvee.config import Settings

# The formats `augment` reads, in detection order; `check` reads preference data too.
FORMAT_CHOICES = list(FORMATS)
CHECK_FORMAT_CHOICES = [*FORMATS, *PREFERENCE_FORMATS]


def _group_help() -> str:
    formats = "\n".join(f"  {fmt.name:<9} {fmt.description}" for fmt in FORMATS.values())
    preference = "\n".join(
        f"  {fmt.name:<14} {fmt.description}" for fmt in PREFERENCE_FORMATS.values()
    )
    return f"""Check and augment instruction data, build preference pairs from a model's own
answers, and write the bundled starter set.

\b
Formats read (detected from the keys, in this order, or given with --format):
{formats}

\b
Preference data (DPO, ORPO, KTO), told apart by "chosen"/"rejected" or "label" in the first
record; `check` reads these too, and `pairs` writes openai-pairs and kto-messages:
{preference}

A licence can be declared with --licence or a sidecar file FILE.cuvee.yaml holding `licence:`,
`authors:` and `source:` (and `model:` for answers a model wrote); what `augment` and `pairs`
write carries their input's."""


@click.group("data", help=_group_help())
def data() -> None:
    pass


data.add_command(pairs)  # in its own module: it runs a model


@data.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(CHECK_FORMAT_CHOICES), help="Skip detection.")
@click.option("--model", help="Count tokens with this stored model's tokenizer and template.")
@click.option(
    "--licence", "--license", "licence", help="Licence id of the data (overrides sidecar)."
)
@click.option("--max-tokens", type=int, help="Flag records longer than this [default: settings].")
@click.option("--json", "json_output", is_flag=True, help="Print one JSON object.")
@click.option("--show", default=20, show_default=True, help="How many problems to list.")
@click.pass_obj
def check(
    settings: Settings, files, fmt, model, licence, max_tokens, json_output: bool, show: int
) -> None:
    """Validate every record and report counts, lengths, duplicates and licence.

    Preference files (pairs for DPO and ORPO, labelled answers for KTO) are recognised from
    their first record, or by a preference --format; their report counts pairs and labels,
    measures prompts and answers, and flags duplicate and contradicting pairs.

    Exits 1 if any record is invalid; never modifies its input.

    Example: cuvee data check train.jsonl --model gemma3-270m --json
    """
    from cuvee.data.validate import check_files, token_counter

    counter = None
    if model:
        from cuvee.store import ModelStore

        stored = ModelStore(settings.models_dir).get(model)
        counter = token_counter(stored.path, stored.manifest.chat_template)
    if _are_preference_files(files, fmt):
        from cuvee.data.preference_check import check_preference_files

        report = check_preference_files(
            files,
            fmt=fmt,
            licence=licence,
            count_tokens=counter,
            max_tokens=max_tokens or settings.max_record_tokens,
        )
        printer = _print_preference_report
    else:
        report = check_files(
            files,
            fmt=fmt,
            licence=licence,
            count_tokens=counter,
            max_tokens=max_tokens or settings.max_record_tokens,
        )
        printer = _print_report
    summary = report.to_json()
    if json_output:
        print_json(summary)
    else:
        printer(summary, report, show)
    if not report.ok:
        sys.exit(1)


def _are_preference_files(files: list[Path], fmt: str | None) -> bool:
    """Preference data by --format, or by every file's first record; one check never mixes the
    two kinds, whose reports differ."""
    from cuvee.data.preference import is_preference_file
    from cuvee.errors import DataError

    if fmt is not None:
        return fmt in PREFERENCE_FORMATS
    kinds = {path: is_preference_file(path) for path in files if path.is_file()}
    if len(set(kinds.values())) > 1:
        preference = ", ".join(str(p) for p, is_pref in kinds.items() if is_pref)
        instruction = ", ".join(str(p) for p, is_pref in kinds.items() if not is_pref)
        raise DataError(
            f"preference data ({preference}) and instruction data ({instruction}) in one check",
            hint="check each kind with its own `cuvee data check`",
        )
    return any(kinds.values())


def _print_problems(report, show: int) -> None:
    echo = click.echo
    for problem in report.errors[:show]:
        echo(f"error: {problem}", err=True)
    if len(report.errors) > show:
        echo(f"... and {len(report.errors) - show} more errors (--show N or --json)", err=True)
    for problem in report.warnings[:show]:
        echo(f"warning: {problem}", err=True)
    if len(report.warnings) > show:
        echo(f"... and {len(report.warnings) - show} more warnings", err=True)


def _print_licences(summary: dict) -> None:
    echo = click.echo
    for path, lic in summary["licence"]["files"].items():
        allowed = {
            True: "commercial use allowed",
            False: "NON-COMMERCIAL",
            None: "commercial use unknown",
        }
        echo(f"licence:    {path}: {lic['id']} ({allowed[lic['commercial_use']]})")
    if summary["licence"]["commercial_use"] is False:
        echo("note: a model trained on this data inherits its non-commercial restriction", err=True)


def _print_report(summary: dict, report, show: int) -> None:
    echo = click.echo
    _print_problems(report, show)
    echo(
        f"records:    {summary['records']} valid, {len(report.errors)} errors, "
        f"{len(report.warnings)} warnings"
    )
    echo("formats:    " + ", ".join(f"{k} {v}" for k, v in summary["formats"].items()))
    echo("categories: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["categories"].items())))
    if set(summary["splits"]) != {"(none)"}:
        echo("splits:     " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
    if report.lengths:
        ln = report.lengths
        echo(
            f"length:     p50 {ln.p50}, p95 {ln.p95}, max {ln.max} {ln.unit}; "
            f"{summary['over_max_length']} over the maximum"
        )
    echo(f"duplicates: {summary['duplicates']}")
    _print_licences(summary)


def _print_preference_report(summary: dict, report, show: int) -> None:
    echo = click.echo
    _print_problems(report, show)
    unpaired = summary["unpaired"]
    echo(
        f"records:    {summary['records']} valid, {len(report.errors)} errors, "
        f"{len(report.warnings)} warnings"
    )
    echo(
        f"preference: {summary['pairs']} pairs, {unpaired['desirable']} desirable and "
        f"{unpaired['undesirable']} undesirable unpaired"
        + ("; pairs and unpaired records mixed" if summary["mixed"] else "")
    )
    echo("formats:    " + ", ".join(f"{k} {v}" for k, v in summary["formats"].items()))
    if set(summary["splits"]) != {"(none)"}:
        echo("splits:     " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
    for name, ln in report.lengths.items():
        if ln is not None:
            echo(f"{name + ':':<11} p50 {ln.p50}, p95 {ln.p95}, max {ln.max} {ln.unit}")
    echo(f"over max:   {summary['over_max_length']} prompt+answer sequences over the maximum")
    if summary["chosen_longer"] is not None:
        echo(f"bias:       chosen longer than rejected in {summary['chosen_longer']:.0%} of pairs")
    echo(f"duplicates: {summary['duplicates']}, {summary['contradictions']} contradicting")
    _print_licences(summary)
    if (unpaired["desirable"] == 0) != (unpaired["undesirable"] == 0):
        echo(
            "note: KTO learns from both desirable and undesirable answers; one kind is missing",
            err=True,
        )


@data.command("starter")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="JSONL file to write."
)
@click.option(
    "--split",
    type=click.Choice(["train", "heldout", "all"]),
    default="all",
    show_default=True,
    help="Which records: the training part, the held-out evaluation slice, or all (marked).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(WRITERS)),
    default="dolly",
    show_default=True,
    help="Format to write.",
)
def starter(output: Path, split: str, fmt: str) -> None:
    """Write the bundled starter data set (Apache-2.0, written for cuvee) to a file.

    Each record carries "split": "train" or "heldout"; never train on the held-out slice.

    Example: cuvee data starter -o starter.jsonl --split train
    """

    from cuvee.data.starter import LICENCE, load_starter
    from cuvee.data.writers import write_jsonl, write_sidecar

    records = load_starter(split)
    n = write_jsonl(records, output, fmt)
    sidecar = write_sidecar(
        output, licence=LICENCE, authors=["cuvee contributors"], source="cuvee starter data set"
    )
    cats = Counter(r.category for r in records)
    click.echo(
        f"wrote {n} records to {output} ({', '.join(f'{k} {v}' for k, v in sorted(cats.items()))})"
    )
    click.echo(f"licence declared in {sidecar}")


@data.command("augment")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="JSONL to write."
)
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), help="Input format (detected).")
@click.option("--per-record", default=1, show_default=True, help="Variants per input record.")
@click.option(
    "--constraint", "constraints", multiple=True, help="Constraint id (repeatable); default all."
)
@click.option(
    "--no-originals", is_flag=True, help="Write only the variants, not the input records."
)
@click.option("--seed", default=0, show_default=True)
@click.option("--list", "list_only", is_flag=True, help="List the constraint ids and exit.")
@click.option("--json", "json_output", is_flag=True, help="Print a JSON summary.")
def augment(file, output, fmt, per_record, constraints, no_originals, seed, list_only, json_output):
    """Add variants whose instruction carries a checkable constraint (all lowercase, N bullet
    points, JSON, an end phrase, a <<title>>, no commas, at most N words...) and whose response
    is rewritten to satisfy it. Output is OpenAI-format JSONL; each variant records its
    constraint under "metadata" so it can be checked later. The input's licence (its sidecar
    FILE.cuvee.yaml) travels to the output's sidecar.

    Example: cuvee data augment train.jsonl -o train.aug.jsonl --per-record 1
    """

    from cuvee.data.augment import augment_records
    from cuvee.data.constraints import CONSTRAINTS, check_constraint
    from cuvee.data.writers import write_jsonl
    from cuvee.errors import DataError

    if list_only:
        for cid in CONSTRAINTS:
            click.echo(cid)
        return
    if per_record < 1:
        raise click.BadParameter("must be at least 1", param_hint="--per-record")
    result = read_valid(file, fmt)
    variants = list(
        augment_records(
            result.records, per_record=per_record, ids=list(constraints) or None, seed=seed
        )
    )
    failed = [
        v
        for v in variants
        if not check_constraint(
            v.metadata["constraint"]["id"], v.turns[-1].content, v.metadata["constraint"]["kwargs"]
        )
    ]
    if failed:  # augment_pair already filters; this guards the file we are about to write
        raise DataError(f"internal error: {len(failed)} variant(s) fail their own constraint")
    out = variants if no_originals else [*result.records, *variants]
    n = write_jsonl(out, output, "openai")
    _pass_declaration_on(file, output, "cuvee data augment")
    by_id = Counter(v.metadata["constraint"]["id"] for v in variants)
    if json_output:
        print_json(
            {
                "input": len(result.records),
                "variants": len(variants),
                "written": n,
                "output": str(output),
                "constraints": dict(by_id),
            }
        )
    else:
        click.echo(
            f"{len(result.records)} records -> {len(variants)} variants; wrote {n} to {output}"
        )
        for cid, count in by_id.most_common():
            click.echo(f"  {cid:<42} {count}")


def _pass_declaration_on(source: Path, output: Path, made_by: str) -> None:
    """The input's licence and authors travel to data written from it, in its sidecar."""
    from cuvee.data.validate import read_declaration
    from cuvee.data.writers import write_sidecar

    declaration = read_declaration(source)
    if declaration.declared_by == "none":
        return
    origin = f"{made_by} of {source.name}"
    write_sidecar(
        output,
        licence=declaration.licence.id,
        authors=declaration.authors,
        source=f"{origin}; {declaration.source}" if declaration.source else origin,
    )
