"""A store model as the ``generate`` callable of :func:`cuvee.docs.answer.ask`: greedy, one
engine opened for all the questions of a command, closed by the caller."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cuvee.progress import Reporter

if TYPE_CHECKING:
    from cuvee.config import Settings

MAX_ANSWER_TOKENS = 256


def default_model(settings: Settings) -> str:
    """The configured chat model, else the base model."""
    return settings.default_chat_model or settings.default_base


class EngineGenerator:
    """Greedy answers from an open engine; ``fits`` tells :func:`cuvee.docs.answer.ask` whether
    a prompt leaves room for the answer in the model's context, so it can give the model fewer
    passages instead of failing."""

    def __init__(self, engine, max_tokens: int = MAX_ANSWER_TOKENS) -> None:
        self.engine = engine
        self.max_tokens = min(max_tokens, max(16, engine.context_length // 4))
        self.reason = "stop"  # why the last answer ended: "length" when the limit cut it

    def fits(self, messages: list[dict]) -> bool:
        from cuvee.engine.base import Request

        used = len(self.engine.prompt_tokens(Request(messages=messages)))
        return used + self.max_tokens <= self.engine.context_length

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    def __call__(self, messages: list[dict]) -> str:
        from cuvee.engine.base import Finished, Request, SamplingParams, TokenEvent
        from cuvee.errors import CuveeError

        params = SamplingParams(temperature=0.0, max_tokens=self.max_tokens, seed=0)
        parts: list[str] = []
        for event in self.engine.submit(Request(messages=messages, params=params)):
            if isinstance(event, TokenEvent):
                parts.append(event.text)
            elif isinstance(event, Finished):
                if event.reason == "error":
                    raise CuveeError(f"generation failed: {event.error}")
                self.reason = event.reason
        return "".join(parts)


def open_generator(
    settings: Settings,
    model: str | None,
    reporter: Reporter,
    threads: int | None = None,
    parallel: int = 1,
) -> tuple[str, EngineGenerator, Callable[[], None]]:
    """(model name, generate(messages) -> text, close); ``parallel`` callers may generate at
    once (the engine batches them)."""
    from cuvee.resolve import open_model

    name = model or default_model(settings)
    target, engine = open_model(
        settings, name, reporter=reporter, threads=threads, n_seq_max=parallel
    )
    return target.model, EngineGenerator(engine), engine.close
