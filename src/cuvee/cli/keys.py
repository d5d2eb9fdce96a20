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
@click.option("--json", "json_output", is_flag=True, help="Print one JSON object with the key.")
@click.pass_obj
def create(
    settings: Settings, name: str, rpm, tpm, models, collections, admin: bool, json_output: bool
) -> None:
    """Create a key and print it once (only its hash is kept).

    Example: cuvee keys create --name support-bot --rpm 60 --models demo --collections handbook
    """
    allowed = models.split(",") if models is not None else None
    visible = collections.split(",") if collections is not None else None
    record, secret = key_store(settings).create(
        name, rpm=rpm, tpm=tpm, models=allowed, collections=visible, admin=admin
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
    click.echo(secret)
    limits = [
        part
        for part in (
            f"{record.rpm} requests/min" if record.rpm else "",
            f"{record.tpm} tokens/min" if record.tpm else "",
            f"models {', '.join(record.models)}" if record.models else "",
            f"collections {', '.join(record.collections)}" if record.collections else "",
            "admin" if record.admin else "",
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
