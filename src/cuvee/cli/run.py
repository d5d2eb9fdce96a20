"""`cuvee run` (one prompt) and `cuvee chat` (a conversation) on the local engine."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from cuvee.cli.output import print_json, reporter_for
from cuvee.engine import DEFAULT_ENGINE, ENGINES

if TYPE_CHECKING:
    from cuvee.config import Settings


def _sampling_options(fn):
    options = [
        click.option("--max-tokens", type=int, default=256, show_default=True),
        click.option(
            "--temperature", type=float, default=0.0, show_default=True, help="0 is greedy."
        ),
        click.option("--top-p", type=float, default=0.95, show_default=True),
        click.option("--top-k", type=int, default=40, show_default=True),
        click.option("--seed", type=int, default=None, help="Sampling seed (reproducible)."),
        click.option("--stop", multiple=True, help="Stop string (repeatable)."),
        click.option(
            "--engine",
            type=click.Choice(list(ENGINES)),
            default=DEFAULT_ENGINE,
            show_default=True,
            help="; ".join(f"{s.name}: {s.summary}" for s in ENGINES.values()) + ".",
        ),
        click.option("--threads", type=int, default=None, help="CPU threads for llama.cpp."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _open(settings: Settings, name: str, engine: str, threads: int | None, quiet: bool):
    from cuvee.engine import get_engine
    from cuvee.resolve import open_model

    options: dict = {}
    if "n_seq_max" in get_engine(engine).options():
        # one conversation at a time: one sequence, so the KV cache holds only what it needs
        options["n_seq_max"] = 1
    return open_model(settings, name, engine, reporter_for(quiet), threads=threads, **options)


def _params(max_tokens, temperature, top_p, top_k, seed, stop):
    from cuvee.engine.base import SamplingParams

    return SamplingParams(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        max_tokens=max_tokens,
        stop=list(stop),
    )


def _stream(engine, request, echo: bool) -> tuple[str, object]:
    """Run one request, printing tokens as they come when ``echo``; (text, finish event)."""
    from cuvee.engine.base import Finished, TokenEvent

    handle = engine.submit(request)
    parts: list[str] = []
    finished = None
    try:
        for event in handle:
            if isinstance(event, TokenEvent):
                parts.append(event.text)
                if echo:
                    click.echo(event.text, nl=False)
                    sys.stdout.flush()
            elif isinstance(event, Finished):
                finished = event
    except KeyboardInterrupt:
        handle.cancel()
        raise
    if finished is not None and finished.reason == "error":
        from cuvee.errors import CuveeError

        raise CuveeError(finished.error or "generation failed")
    return "".join(parts), finished


@click.command(
    epilog="""Examples:

\b
  cuvee run demo "Give three tips for staying healthy."
  cuvee run gemma3-270m "The capital of France is" --raw --max-tokens 20
  cuvee run ./model-q8_0.gguf "hello" --temperature 0.7 --seed 1 --json"""
)
@click.argument("name")
@click.argument("prompt")
@click.option("--raw", is_flag=True, help="Send the prompt as is, without the chat template.")
@click.option("--json", "json_output", is_flag=True, help="Print one JSON result at the end.")
@_sampling_options
@click.pass_obj
def run(
    settings: Settings,
    name,
    prompt,
    raw,
    json_output,
    max_tokens,
    temperature,
    top_p,
    top_k,
    seed,
    stop,
    engine,
    threads,
) -> None:
    """Generate a reply from model NAME (a stored model or a .gguf file) to PROMPT, streamed.
    The model's chat template is applied unless --raw."""
    from cuvee.engine.base import Request

    target, eng = _open(settings, name, engine, threads, quiet=json_output)
    try:
        params = _params(max_tokens, temperature, top_p, top_k, seed, stop)
        request = (
            Request(prompt=prompt, params=params)
            if raw
            else Request(messages=[{"role": "user", "content": prompt}], params=params)
        )
        text, finished = _stream(eng, request, echo=not json_output)
    finally:
        eng.close()
    if json_output:
        print_json(
            {
                "model": target.model,
                "engine": target.engine,
                "text": text,
                "finish_reason": finished.reason if finished else None,
                "usage": {
                    "prompt_tokens": finished.prompt_tokens if finished else None,
                    "completion_tokens": finished.completion_tokens if finished else None,
                },
            }
        )
    else:
        click.echo()


@click.command(
    epilog="""Commands inside the chat: /reset forgets the conversation, /exit (or Ctrl-D) quits.

\b
Example:
  cuvee chat demo --system "Answer in one sentence." """
)
@click.argument("name")
@click.option("--system", default=None, help="A system prompt for the conversation.")
@_sampling_options
@click.pass_obj
def chat(
    settings: Settings,
    name,
    system,
    max_tokens,
    temperature,
    top_p,
    top_k,
    seed,
    stop,
    engine,
    threads,
) -> None:
    """Talk with model NAME: replies stream as they are generated; the conversation is kept."""
    from cuvee.engine.base import Request

    target, eng = _open(settings, name, engine, threads, quiet=False)
    history: list[dict[str, str]] = []
    if system:
        history.append({"role": "system", "content": system})
    click.echo(f"chatting with {target.model} ({target.engine}); /reset, /exit", err=True)
    try:
        while True:
            try:
                line = click.prompt(">>>", prompt_suffix=" ", default="", show_default=False)
            except (EOFError, click.exceptions.Abort):
                click.echo(err=True)
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit", "/bye"):
                break
            if text == "/reset":
                history = history[:1] if system else []
                click.echo("(conversation reset)", err=True)
                continue
            if text.startswith("/"):
                click.echo(f"unknown command {text}: /reset or /exit", err=True)
                continue
            history.append({"role": "user", "content": text})
            params = _params(max_tokens, temperature, top_p, top_k, seed, stop)
            try:
                reply, finished = _stream(eng, Request(messages=history, params=params), True)
            except KeyboardInterrupt:
                click.echo("\n(interrupted)", err=True)
                history.pop()
                continue
            click.echo()
            if finished is not None and finished.reason == "length":
                click.echo(f"(cut at --max-tokens {max_tokens})", err=True)
            history.append({"role": "assistant", "content": reply})
    finally:
        eng.close()
