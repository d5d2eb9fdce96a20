"""`cuvee keys`: API keys for `cuvee serve`, stored hashed in $CUVEE_HOME/keys.sqlite."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from cuvee.cli.output import print_json

if TYPE_CHECKING:
    from cuvee.config import Settings


def key_store(settings: Settings):
    from cuvee.serve.keys import KeyStore

    return KeyStore(settings.home / "keys.sqlite")


@click.group("keys")
def keys() -> None:
    """Create, list and revoke API keys for `cuvee serve`.

    Once a key exists, every /v1 request to the server needs `Authorization: Bearer KEY`.
    Only a hash of each key is stored: a lost key cannot be shown again, only revoked.
    """


_BUDGET_OPTION = click.option(
    "--budget",
    multiple=True,
    metavar="UNIT/PERIOD=AMOUNT",
    help="A spending limit: tokens or usd, a day (UTC) or a month, e.g. usd/month=20 or "
    "tokens/day=200000 (repeatable). Requests are refused (429 insufficient_quota) once spend "
    "plus the requests in flight reach it.",
)


@keys.command("create")
@click.option("--name", required=True, help="Who or what uses the key (unique among active).")
@click.option("--rpm", type=click.IntRange(min=1), default=None, help="Requests per minute.")
@click.option(
    "--tpm", type=click.IntRange(min=1), default=None, help="Tokens (in + out) per minute."
)
@click.option("--models", default=None, help="Comma-separated models it may use (default: all).")
@click.option(
    "--collections",
    default=None,
    help="Comma-separated document collections it may search (rag:NAME, /v1/retrieve). "
    "Default: all for a key without --models, none for a key limited to some models. Others "
    "answer 404 to it, as if they did not exist.",
)
@click.option(
    "--admin",
    is_flag=True,
    help="May manage the server from the web UI: start and stop training, create and revoke keys.",
)
@_BUDGET_OPTION
@click.option("--json", "json_output", is_flag=True, help="Print one JSON object with the key.")
@click.pass_obj
def create(
    settings: Settings,
    name: str,
    rpm,
    tpm,
    models,
    collections,
    admin: bool,
    budget: tuple[str, ...],
    json_output: bool,
) -> None:
    """Create a key and print it once (only its hash is kept).

    Example: cuvee keys create --name support-bot --rpm 60 --models demo --collections handbook
    --budget usd/month=20
    """
    from cuvee.serve.budget import parse_budgets

    allowed = models.split(",") if models is not None else None
    visible = collections.split(",") if collections is not None else None
    budgets = parse_budgets(budget)
    record, secret = key_store(settings).create(
        name, rpm=rpm, tpm=tpm, models=allowed, collections=visible, admin=admin, budgets=budgets
    )
    if visible is not None:
        from cuvee.docs.index import list_names

        existing = set(list_names(settings.home))
        for collection in record.collections or ():
            if collection not in existing:
                click.echo(f"note: no collection {collection!r} yet", err=True)
    if allowed is not None:
        from cuvee.store import ModelStore

        stored = set(ModelStore(settings.models_dir).names())
        for model in record.models or ():
            if model not in stored:
                click.echo(f"note: no model {model!r} in the store yet", err=True)
    if json_output:
        print_json({**record.public(), "key": secret})
        return
    from cuvee.serve.budget import describe

    click.echo(secret)
    limits = [
        part
        for part in (
            f"{record.rpm} requests/min" if record.rpm else "",
            f"{record.tpm} tokens/min" if record.tpm else "",
            f"models {', '.join(record.models)}" if record.models else "",
            f"collections {', '.join(record.collections)}" if record.collections else "",
            "admin" if record.admin else "",
            f"budget {describe(record.budgets)}" if record.budgets else "",
        )
        if part
    ]
    click.echo(
        f"key {name!r} created ({'; '.join(limits) or 'no limits'}). It is shown only now: "
        "keep it somewhere safe.",
        err=True,
    )


@keys.command("list")
@click.option("--json", "json_output", is_flag=True, help="Print a JSON array.")
@click.option("--all", "show_all", is_flag=True, help="Include revoked keys.")
@click.pass_obj
def list_keys(settings: Settings, json_output: bool, show_all: bool) -> None:
    """List keys: name, id prefix, limits, models, collections and dates (never the
    secrets)."""
    records = key_store(settings).list(include_revoked=show_all)
    if json_output:
        print_json([r.public() for r in records])
        return
    if not records:
        click.echo(
            "no keys: the server is open on loopback only (see `cuvee keys create`)", err=True
        )
        return
    click.echo(
        f"{'NAME':<20} {'ID':<16} {'RPM':>6} {'TPM':>8}  {'MODELS':<20} {'COLLECTIONS':<20} CREATED"
    )
    for r in records:
        models = ",".join(r.models) if r.models else "all"
        collections = (
            ",".join(r.collections) if r.collections else ("all" if r.models is None else "none")
        )
        revoked = f"  REVOKED {r.revoked_at}" if r.revoked_at else ""
        click.echo(
            f"{r.name:<20} {r.public()['id']:<16} {r.rpm or '-':>6} {r.tpm or '-':>8}  "
            f"{models:<20} {collections:<20} {r.created_at}{revoked}"
        )


@keys.command("revoke")
@click.argument("name")
@click.pass_obj
def revoke(settings: Settings, name: str) -> None:
    """Revoke key NAME: a running server refuses it from the next request on."""
    record = key_store(settings).revoke(name)
    click.echo(f"key {record.name!r} ({record.public()['id']}) revoked")


@keys.command("budget")
@click.argument("name")
@_BUDGET_OPTION
@click.option("--none", "clear", is_flag=True, help="Remove every budget of the key.")
@click.pass_obj
def budget(settings: Settings, name: str, budget: tuple[str, ...], clear: bool) -> None:
    """Set the budgets of key NAME (replacing those it had); a running server applies them
    from the key's next request.

    Example: cuvee keys budget support-bot --budget usd/month=50 --budget tokens/day=1000000
    """
    from cuvee.errors import ConfigError
    from cuvee.serve.budget import describe, parse_budgets

    if clear == bool(budget):
        raise ConfigError("give --budget UNIT/PERIOD=AMOUNT (repeatable), or --none")
    record = key_store(settings).set_budgets(name, None if clear else parse_budgets(budget))
    click.echo(f"key {name!r}: {describe(record.budgets) if record.budgets else 'no budget'}")


@keys.command("usage")
@click.option(
    "--since",
    default="month",
    show_default=True,
    help="today, month (this calendar month, UTC), all, or a day as YYYY-MM-DD.",
)
@click.option("--key", "key_name", default=None, help="Only this key.")
@click.option("--json", "json_output", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def usage(settings: Settings, since: str, key_name: str | None, json_output: bool) -> None:
    """Requests, tokens and cost per key, model and target (the local model or the
    UPSTREAM/MODEL that served), from $CUVEE_HOME/usage.sqlite, with each key's budgets and
    what it spent of them.

    Example: cuvee keys usage --since today --json
    """
    from cuvee.serve.budget import Budgets, Ledger, since_day

    day = since_day(since)
    ledger = Ledger(settings.home / "usage.sqlite")
    rows = [r for r in ledger.report(day) if key_name is None or r["key"] == key_name]
    spend = Budgets(ledger)
    budgets = []
    for record in key_store(settings).list(include_revoked=False):
        if record.budgets and (key_name is None or record.name == key_name):
            for name, limit in record.budgets.items():
                unit, period = name.split("/")
                used = spend.spent(record.key_id, period).get(unit)
                budgets.append(
                    {"key": record.name, "budget": name, "limit": limit, "used": round(used, 6)}
                )
    if json_output:
        print_json({"since": day, "usage": rows, "budgets": budgets})
        return
    if not rows:
        click.echo(f"no usage recorded since {day or 'the start'}", err=True)
    else:
        click.echo(
            f"{'KEY':<16} {'MODEL':<20} {'TARGET':<26} {'REQUESTS':>8} {'PROMPT':>10} "
            f"{'COMPLETION':>10} {'USD':>10}"
        )
        for r in rows:
            click.echo(
                f"{r['key'] or '-':<16} {r['model'] or '-':<20} {r['target'] or '-':<26} "
                f"{r['requests']:>8} {r['prompt_tokens']:>10} {r['completion_tokens']:>10} "
                f"{r['usd']:>10.4f}"
            )
    for b in budgets:
        unit, period = b["budget"].split("/")
        share = b["used"] / b["limit"] if b["limit"] else 0.0
        click.echo(
            f"budget {b['key']}: {b['budget']} {b['used']:g} of {b['limit']:g} ({share:.0%})"
        )
