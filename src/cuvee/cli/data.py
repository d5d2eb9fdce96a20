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

from cuvee.cli.output import print_json
from cuvee.data.formats import FORMATS
from cuvee.data.preference import PREFERENCE_FORMATS
from cuvee.data.writers import WRITERS
from cuvee.eval.preference_pairs import (
    DEFAULT_MARGIN,
    DEFAULT_MAX_TOKENS,
    DEFAULT_SAMPLES,
    DEFAULT_TEMPERATURE,
)

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
    from collections import Counter

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
    from collections import Counter

    from cuvee.data.augment import augment_records
    from cuvee.data.constraints import CONSTRAINTS, check_constraint
    from cuvee.data.formats import read_file
    from cuvee.data.writers import write_jsonl
    from cuvee.errors import DataError

    if list_only:
        for cid in CONSTRAINTS:
            click.echo(cid)
        return
    if per_record < 1:
        raise click.BadParameter("must be at least 1", param_hint="--per-record")
    result = read_file(file, fmt)
    if result.problems:
        for problem in result.problems[:10]:
            click.echo(f"error: {problem}", err=True)
        raise DataError(
            f"{file}: {len(result.problems)} invalid record(s); nothing written",
            hint=f"run `cuvee data check {file}` for the full list",
        )
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


def _checks_help() -> str:
    from cuvee.eval.verifiers import VERIFIERS

    return "\n".join(f"  {v.name:<12} {v.description}" for v in VERIFIERS.values())


def _check_names() -> list[str]:
    from cuvee.eval.verifiers import VERIFIERS

    return list(VERIFIERS)


@data.command(
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
original fails the added constraint. The output's sidecar FILE.cuvee.yaml carries the input's
licence and the model's name, licence and lineage. Held-out records are never used.

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
    output: Path,
    kto_output: Path | None,
    licence: str | None,
    json_output: bool,
) -> None:
    from cuvee.cli.output import reporter_for
    from cuvee.data.formats import read_file
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
    if not from_augment:
        if k < 2:
            raise bad(f"{k}: a pair needs at least 2 answers per prompt", "-k/--samples")
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

    result = read_file(data_file, fmt)
    if result.problems:
        for problem in result.problems[:10]:
            click.echo(f"error: {problem}", err=True)
        raise DataError(
            f"{data_file}: {len(result.problems)} invalid record(s); nothing written",
            hint=f"run `cuvee data check {data_file}` for the full list",
        )
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
