"""The engine interface: a request in, a stream of token events out, the same for llama.cpp and
transformers, so the CLI, the server and evaluation never care which engine runs a model."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from cuvee.errors import ConfigError, CuveeError

FinishReason = Literal["stop", "length", "cancelled", "error"]


class EngineError(CuveeError):
    """The engine cannot run a request (closed, failed, or the request cannot fit)."""


class ContextLengthError(EngineError):
    """A prompt does not fit in the context one sequence can hold."""


@dataclass
class SamplingParams:
    """How tokens are chosen. ``temperature == 0`` is greedy (the other knobs are then unused);
    ``seed`` makes sampling reproducible: the same seed, prompt and model give the same text,
    alone or batched with other requests."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    # OpenAI's additive penalties: subtract frequency * count + presence * (count > 0) from a
    # token's logit, counting the tokens generated so far (the whole completion)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None  # GBNF, as llama.cpp reads it
    json_schema: dict | None = None  # converted to GBNF; exclusive with ``grammar``
    # Keep generating past end-of-generation tokens (benchmarks that need a fixed length).
    ignore_eos: bool = False
    # Report each sampled token's log-probability (None: not computed, it costs a softmax over
    # the vocabulary per token), with that many most likely alternatives (0 to MAX_LOGPROBS).
    logprobs: int | None = None

    def validate(self) -> None:
        """Raise ConfigError naming the first out-of-range knob."""
        checks = [
            (self.temperature >= 0, f"temperature {self.temperature} is negative"),
            (0 < self.top_p <= 1, f"top_p {self.top_p} is not in (0, 1]"),
            (self.top_k >= 0, f"top_k {self.top_k} is negative (0 disables it)"),
            (0 <= self.min_p <= 1, f"min_p {self.min_p} is not in [0, 1]"),
            (self.repeat_penalty > 0, f"repeat_penalty {self.repeat_penalty} must be > 0"),
            (
                -2 <= self.frequency_penalty <= 2 and -2 <= self.presence_penalty <= 2,
                "frequency_penalty and presence_penalty must be in [-2, 2]",
            ),
            (self.max_tokens >= 1, f"max_tokens {self.max_tokens} must be at least 1"),
            (all(isinstance(s, str) for s in self.stop), "stop must be a list of strings"),
            (
                self.grammar is None or self.json_schema is None,
                "give a grammar or a json_schema, not both",
            ),
            (
                self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
                f"logprobs {self.logprobs} is not in [0, {MAX_LOGPROBS}]",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def gbnf(self) -> str | None:
        """The GBNF grammar that constrains sampling, if any: ``grammar`` as given, or
        ``json_schema`` converted with llama-cpp-python's converter."""
        if self.grammar is not None:
            return self.grammar
        if self.json_schema is None:
            return None
        try:
            from llama_cpp.llama_grammar import json_schema_to_gbnf
        except ImportError as exc:
            raise ConfigError(
                "json_schema needs llama-cpp-python's JSON-schema-to-grammar converter",
                hint="pip install llama-cpp-python, or pass a GBNF grammar instead",
            ) from exc
        try:
            return json_schema_to_gbnf(json.dumps(self.json_schema))
        except Exception as exc:
            raise ConfigError(f"json_schema cannot be turned into a grammar: {exc}") from exc


# Alternatives a request may ask for per token (OpenAI's top_logprobs limit).
MAX_LOGPROBS = 20


@dataclass(frozen=True)
class TopLogprob:
    """One candidate token: its text (``bytes:\\x..`` when its bytes are not whole UTF-8, as
    OpenAI writes them), log-probability and bytes."""

    token: str
    logprob: float
    bytes: list[int]


@dataclass(frozen=True)
class TokenLogprob:
    """The sampled token's log-probability and the ``top`` most likely tokens at its position.

    Both engines report the model's own distribution: a log-softmax of the raw logits, before
    penalties, grammar, top-k/top-p/min-p and temperature. That is what the model believes
    (what OpenAI's logprobs mean, and what scoring and calibration want), not the distribution
    the sampler finally drew from, so a grammar-forced token can have a low logprob."""

    token: str
    logprob: float
    bytes: list[int]
    top: list[TopLogprob]


def token_text(piece: bytes) -> str:
    """A token's bytes as OpenAI shows them: the text, or ``bytes:\\xe2\\x80`` for part of a
    UTF-8 character."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in piece)


def top_logprobs(
    logprobs: Any, sampled: int, n: int, piece: Callable[[int], bytes]
) -> TokenLogprob:
    """The :class:`TokenLogprob` of ``sampled`` from a vector of log-probabilities over the
    vocabulary (numpy), with the ``n`` most likely tokens, most likely first."""
    import numpy as np

    top: list[TopLogprob] = []
    if n > 0:
        ids = (
            np.argpartition(-logprobs, n - 1)[:n] if n < len(logprobs) else np.arange(len(logprobs))
        )
        ids = ids[np.argsort(-logprobs[ids], kind="stable")]
        for i in ids.tolist():
            data = piece(i)
            top.append(TopLogprob(token_text(data), float(logprobs[i]), list(data)))
    data = piece(sampled)
    return TokenLogprob(token_text(data), float(logprobs[sampled]), list(data), top)


def log_softmax(logits: Any) -> Any:
    """Log-probabilities from raw logits (numpy, float64 for the sum over a large vocabulary)."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


# Tokens the repeat penalty looks back over, llama.cpp's default.
REPEAT_PENALTY_WINDOW = 64


def penalty_window(p: SamplingParams) -> int:
    """How many recent tokens the penalties count: llama.cpp's 64 for the repeat penalty alone,
    the whole completion once an additive (OpenAI) penalty is asked for."""
    if p.frequency_penalty or p.presence_penalty:
        return max(REPEAT_PENALTY_WINDOW, p.max_tokens)
    return REPEAT_PENALTY_WINDOW


@dataclass
class Request:
    """One generation: a raw ``prompt`` (sent as is), or chat ``messages`` rendered with the
    model's own chat template. ``lora`` names an adapter the engine was opened with."""

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    lora: str | None = None

    def validate(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ConfigError("a request needs exactly one of prompt or messages")
        if self.messages is not None and not all(
            isinstance(m, dict) and "role" in m for m in self.messages
        ):
            raise ConfigError("each message must be a dict with a 'role' and a 'content'")
        self.params.validate()


@dataclass(frozen=True)
class TokenEvent:
    """Text released by one generated token. ``text`` may be empty (bytes of an unfinished
    UTF-8 character, or a possible start of a stop string, held back) and may carry text held
    from earlier tokens. ``token_id`` is None for the last event of a request when it only
    releases held text. ``logprob`` is set for a sampled token when the request asked for
    logprobs."""

    text: str
    token_id: int | None
    logprob: TokenLogprob | None = None


@dataclass(frozen=True)
class Finished:
    """The last event of every request. ``completion_tokens`` counts every token sampled,
    including an end-of-generation token."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


Event = TokenEvent | Finished


@dataclass(frozen=True)
class Completion:
    """A request's whole result, for callers that do not stream."""

    text: str
    token_ids: list[int]
    finished: Finished


class Handle:
    """A submitted request: iterate it for its events (the engine thread fills a thread-safe
    queue; iteration ends after ``Finished``), ``cancel()`` it from any thread."""

    def __init__(self, on_cancel: Callable[[], None] | None = None) -> None:
        self._events: queue.Queue[Event] = queue.Queue()
        self._cancel = threading.Event()
        self._on_cancel = on_cancel
        self._lock = threading.Lock()
        self._listener: Callable[[Event], None] | None = None
        self._consumed = False  # the iterator has handed out Finished
        self.finished: Finished | None = None

    def __iter__(self) -> Iterator[Event]:
        while not self._consumed:
            event = self._events.get()
            if isinstance(event, Finished):
                self._consumed = True
            yield event

    def cancel(self) -> None:
        """Ask the engine to stop this request; it ends with reason "cancelled" (unless it
        finished first) and its slot is freed before the next step."""
        self._cancel.set()
        if self._on_cancel is not None:
            self._on_cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def collect(self) -> Completion:
        """Wait for the end; the text, the token ids and the finish event."""
        parts: list[str] = []
        ids: list[int] = []
        finished = None
        for event in self:
            if isinstance(event, TokenEvent):
                parts.append(event.text)
                if event.token_id is not None:
                    ids.append(event.token_id)
            else:
                finished = event
        assert finished is not None
        return Completion("".join(parts), ids, finished)

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Have events delivered to ``listener`` instead of the iterator: events already queued
        first, in order, then each as it is emitted, on the engine's thread. A server reading
        many streams needs no thread per stream this way (those threads compete with the
        engine's on a small CPU). The listener must be quick and must not raise."""
        with self._lock:
            while True:
                try:
                    listener(self._events.get_nowait())
                except queue.Empty:
                    break
            self._listener = listener

    def emit(self, event: Event) -> None:
        """Engine side: hand one event to the consumer."""
        if isinstance(event, Finished):
            self.finished = event
        with self._lock:
            listener = self._listener
            if listener is None:
                self._events.put(event)
                return
        try:
            listener(event)
        except Exception:  # a consumer's failure must not stop the engine's other sequences
            self._listener = None


class StopFilter:
    """Cuts generated text at the first stop string. Text that could still become a stop string
    is held back, so no stop string and no partial prefix of one ever reaches the client."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to release, whether a stop string was reached)."""
        held = self._held + text
        if not self._stops:
            self._held = ""
            return held, False
        cut = min((i for s in self._stops if (i := held.find(s)) >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return held[:cut], True
        keep = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(held)), keep, -1):
                if held.endswith(s[:k]):
                    keep = k
                    break
        self._held = held[len(held) - keep :]
        return held[: len(held) - keep], False

    def flush(self) -> str:
        """Release what is held (generation ended without completing a stop string)."""
        held, self._held = self._held, ""
        return held


class Engine(Protocol):
    """What the CLI, the server and evaluation use. ``submit`` validates, tokenizes and raises
    (ConfigError, ContextLengthError) before anything runs; failures while generating arrive
    as ``Finished(reason="error")``."""

    name: str

    @property
    def context_length(self) -> int:
        """Tokens one sequence can hold: prompt plus completion."""
        ...

    def submit(self, request: Request) -> Handle: ...

    def prompt_tokens(self, request: Request) -> list[int]:
        """The exact token ids the model is fed for ``request`` (template applied)."""
        ...

    def render_messages(self, messages: list[dict[str, Any]]) -> str:
        """The chat template applied to ``messages``, with the generation prompt."""
        ...

    def close(self) -> None: ...


def context_error(n_prompt: int, limit: int, detail: str = "") -> ContextLengthError:
    """The error for a prompt that leaves no room to generate, naming both numbers."""
    return ContextLengthError(
        f"the prompt is {n_prompt} tokens but the context holds {limit} tokens per sequence"
        f"{detail} (prompt plus completion): at most {limit - 1} prompt tokens fit",
        hint="shorten the prompt, or open the engine with a larger context (n_ctx)",
    )
