"""`cuvee serve`: the OpenAI-compatible HTTP server over the store's models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cuvee.errors import ConfigError
from cuvee.serve.keys import is_loopback

if TYPE_CHECKING:
    from cuvee.config import Settings


def check_exposure(host: str, has_keys: bool, insecure_no_auth: bool) -> str | None:
    """Refuse to serve without keys beyond loopback unless told to; a warning when told."""
    if has_keys or is_loopback(host):
        return None
    if not insecure_no_auth:
        raise ConfigError(
            f"refusing to serve on {host} without API keys: anyone who can reach it could use "
            "the models",
            hint="create a key first (`cuvee keys create --name NAME`), bind to 127.0.0.1, or "
            "pass --insecure-no-auth if the network is yours alone",
        )
    return f"warning: serving on {host} with no API key (--insecure-no-auth)"


@click.command(
    epilog="""Examples:

\b
  cuvee serve --model demo                       # http://127.0.0.1:8000/v1, no key needed
  cuvee keys create --name team && cuvee serve --host 0.0.0.0 --model demo
  curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "demo", "messages": [{"role": "user", "content": "Hello"}]}'
  cuvee serve --upstream vllm=http://gpu1:8000/v1   # also serves vllm/MODEL from that server
  cuvee serve --config serve.yaml                   # routes: fallback chains, replicas

\b
Endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/retrieve, /v1/models,
/health, /ready, /metrics. The model rag:COLLECTION (or any chat model with "collection" in the
body) answers from a `cuvee docs` collection, every sentence checked, with a `citations` field;
keys made with --collections see only those collections. One JSON line per request goes to
stderr (or --log-file), without prompt text unless --log-prompts. SIGTERM or Ctrl-C drains:
running streams finish, new requests get 503. The web UI is at /ui. A route of serve.yaml (see
the README) answers from the first of its targets that works; a response says which served it
(`cuvee.served_by`), and a stream cut after tokens ends with finish_reason "error"."""
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Load this model at start and list it first (repeatable; BASE:ADAPTER loads a LoRA "
    "fine-tune over its base's engine); any stored model can still be requested by name.",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Allow a non-loopback --host with no API key configured (keys, once created, are "
    "always required).",
)
@click.option(
    "--max-loaded",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Engines kept in memory; the least recently used idle one is unloaded beyond it.",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads per engine.")
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Sequences running or waiting across models; beyond it requests get 503.",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append the request log (one JSON line per /v1 request) here instead of stderr.",
)
@click.option(
    "--log-prompts",
    is_flag=True,
    help="Put prompts and outputs in the request log (left out by default: users' data).",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds a shutdown signal waits for running streams (new requests get 503 "
    "meanwhile); a second signal stops at once. 0: no drain.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="serve.yaml: upstream servers and routes (fallback, replicas) beside the local models.",
)
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    help="NAME=URL: an OpenAI-compatible server whose models are served (and listed in "
    "/v1/models) as NAME/MODEL (repeatable; key from CUVEE_UPSTREAM_<NAME>_API_KEY).",
)
@click.pass_obj
def serve(
    settings: Settings,
    host: str,
    port: int,
    models: tuple[str, ...],
    insecure_no_auth: bool,
    max_loaded: int,
    threads: int | None,
    max_queue: int,
    log_file: Path | None,
    log_prompts: bool,
    drain_timeout: float,
    config_file: Path | None,
    upstreams: tuple[str, ...],
) -> None:
    """Serve the store's models through an OpenAI-compatible API (chat, completions, models,
    answers from document collections).

    Model ids are store names, and rag:COLLECTION for each `cuvee docs` collection. Engines
    load on first use (a stored model without a GGUF is exported once, as `cuvee run` does)
    and keep batching concurrent requests.
    """
    import uvicorn

    from cuvee.cli.keys import key_store
    from cuvee.serve.app import create_app
    from cuvee.serve.drain import DrainingServer
    from cuvee.serve.keys import Authenticator
    from cuvee.serve.models import ModelRegistry, split_id
    from cuvee.serve.requestlog import RequestLog
    from cuvee.store import ModelStore

    store = ModelStore(settings.models_dir)
    for name in models:  # fail now, with suggestions, rather than at the first request
        for part in split_id(name) or (name,):
            store.get(part)
    keys = key_store(settings)
    warning = check_exposure(host, keys.has_active(), insecure_no_auth)
    if warning:
        click.echo(warning, err=True)
    if len(models) > max_loaded:
        click.echo(
            f"note: --max-loaded {max_loaded}: only the first {max_loaded} --model are loaded "
            "at start; the others load on first use",
            err=True,
        )
    registry = ModelRegistry(
        settings,
        max_loaded=max_loaded,
        preload=models,
        engine_options={"n_threads": threads} if threads else {},
    )
    request_log = RequestLog(log_file, log_prompts=log_prompts)
    gateway = None
    if config_file is not None or upstreams:
        from cuvee.serve.gateway.config import load
        from cuvee.serve.gateway.router import Gateway

        gateway = Gateway(load(config_file, upstreams))
    reload = changed = None
    if gateway is not None and config_file is not None:
        seen = [config_file.stat().st_mtime]

        def changed() -> bool:
            try:
                mtime = config_file.stat().st_mtime
            except OSError:
                return False
            if mtime == seen[0]:
                return False
            seen[0] = mtime
            return True

        def reload() -> None:
            from cuvee.errors import CuveeError
            from cuvee.serve.gateway.config import load

            try:
                changes = gateway.reload(load(config_file, upstreams))
            except CuveeError as exc:
                click.echo(f"SIGHUP: {exc.message}; the config in use stays", err=True)
                return
            click.echo(
                f"SIGHUP: {config_file} reloaded: {'; '.join(changes) or 'no change'}", err=True
            )

    app = create_app(
        settings,
        registry,
        Authenticator(keys),
        max_queue=max_queue,
        request_log=request_log,
        gateway=gateway,
    )
    auth = "API keys required" if keys.has_active() else "no API key needed"
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"serving on http://{shown}:{port}/v1 ({auth}), web UI at http://{shown}:{port}/ui; "
        "Ctrl-C stops",
        err=True,
    )
    # the request log replaces uvicorn's access log (which would print each request twice)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", access_log=False, timeout_graceful_shutdown=5
    )
    try:
        DrainingServer(
            config, app.state.cuvee, drain_timeout, on_hangup=reload, changed=changed
        ).run()
    finally:
        request_log.close()
