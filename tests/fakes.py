"""Test doubles shared by test modules: ``FakeEngine``, the Engine protocol with scripted output
that the server tests inject through the model registry and the engine contract tests check
against the same matrix as the real engines."""

from __future__ import annotations

import threading
import time
from typing import Any

from cuvee.engine.base import (
    Finished,
    Handle,
    Request,
    StopFilter,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    context_error,
)
from cuvee.errors import ConfigError

SCRIPT = ("Hello", ",", " world", "!")


class FakeEngine:
    """The Engine protocol with scripted output: one token per whitespace word of the rendered
    prompt (plus BOS); tokens come from ``script`` (repeated when ``endless``), honouring
    ``max_tokens`` and stop strings; ``barrier`` makes every request wait for the others before
    its first token, so a blocked event loop would show up as a broken barrier."""

    name = "fake"

    def __init__(
        self,
        model: str = "fake",
        script: tuple[str, ...] = SCRIPT,
        *,
        context: int = 64,
        endless: bool = False,
        barrier: threading.Barrier | None = None,
        fail_after: int | None = None,
        shut_down: bool = False,
        gate: threading.Event | None = None,
        first_delay: float = 0.0,
        continues: bool = False,
    ) -> None:
        self.model = model
        # go on from a final assistant message, as the llama.cpp engine does: skip as many
        # script tokens as that message has whitespace words
        self.continues = continues
        self.script = script
        self.context = context
        self.endless = endless
        self.barrier = barrier
        self.fail_after = fail_after
        self.shut_down = shut_down  # cancel every request itself, as a closing engine does
        self.gate = gate  # when given, every request waits for it after its first token
        self.first_delay = first_delay  # seconds before the first token (a prompt being read)
        self.submitted: list[Request] = []
        self.adapters: list[str] = []  # loaded with load_adapter, as the llama.cpp engine does
        self.adapter_files: list[str] = []
        self.handles: list[Handle] = []
        self.threads: list[threading.Thread] = []
        self.finishes: list[Finished] = []
        self.closed = False
        self.closed_event = threading.Event()

    @property
    def context_length(self) -> int:
        return self.context

    def render_messages(self, messages: list[dict[str, Any]]) -> str:
        turns = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return f"{turns}\nassistant:"

    def prompt_tokens(self, request: Request) -> list[int]:
        text = (
            request.prompt if request.messages is None else self.render_messages(request.messages)
        )
        return [2] + [10 + i for i, _ in enumerate((text or "").split())]

    def load_adapter(self, name: str, path: Any) -> None:
        self.adapters.append(name)
        self.adapter_files.append(str(path))

    def submit(self, request: Request) -> Handle:
        request.validate()
        if request.lora is not None and request.lora not in self.adapters:
            raise ConfigError(f"no LoRA adapter {request.lora!r} on this engine")
        tokens = self.prompt_tokens(request)
        if len(tokens) >= self.context:
            raise context_error(len(tokens), self.context)
        handle = Handle()
        self.submitted.append(request)
        self.handles.append(handle)
        thread = threading.Thread(target=self._emit, args=(request, handle, len(tokens)))
        self.threads.append(thread)
        thread.start()
        return handle

    def _emit(self, request: Request, handle: Handle, n_prompt: int) -> None:
        if self.barrier is not None:
            try:
                self.barrier.wait()
            except threading.BrokenBarrierError:
                self._end(handle, Finished("error", n_prompt, 0, "the other requests never came"))
                return
        stop = StopFilter(request.params.stop)
        count = 0
        offset = 0
        messages = request.messages or []
        if self.continues and messages and messages[-1]["role"] == "assistant":
            offset = len(str(messages[-1]["content"]).split())
        if self.first_delay:
            time.sleep(self.first_delay)
        while True:
            if handle.cancelled or self.shut_down:
                self._end(handle, Finished("cancelled", n_prompt, count))
                return
            if self.fail_after is not None and count >= self.fail_after:
                self._end(handle, Finished("error", n_prompt, count, "the fake engine broke"))
                return
            if not self.endless and count >= len(self.script) - offset:
                handle.emit(TokenEvent(stop.flush(), None))
                self._end(handle, Finished("stop", n_prompt, count + 1))  # + end-of-turn
                return
            piece = self.script[(offset + count) % len(self.script)]
            count += 1
            text, stopped = stop.feed(piece)
            handle.emit(
                TokenEvent(text, count, fake_logprob(piece, count, request.params.logprobs))
            )
            if stopped:
                self._end(handle, Finished("stop", n_prompt, count))
                return
            if count >= request.params.max_tokens:
                handle.emit(TokenEvent(stop.flush(), None))
                self._end(handle, Finished("length", n_prompt, count))
                return
            if self.endless:
                time.sleep(0.002)
            if self.gate is not None and count == 1:
                self.gate.wait(timeout=60)

    def _end(self, handle: Handle, event: Finished) -> None:
        self.finishes.append(event)
        handle.emit(event)

    def close(self) -> None:
        self.closed = True
        self.closed_event.set()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=10)


def fake_logprob(piece: str, count: int, n: int | None) -> TokenLogprob | None:
    """Scripted logprobs: token k has logprob -k/10, its alternatives "alt0", "alt1" ... lower."""
    if n is None:
        return None
    top = [TopLogprob(f"alt{i}", -count / 10 - i - 1, list(f"alt{i}".encode())) for i in range(n)]
    return TokenLogprob(piece, -count / 10, list(piece.encode()), top)
