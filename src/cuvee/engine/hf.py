"""A transformers engine for Hugging Face checkpoints: the reference the llama.cpp engine is
checked against, and a way to run a model before it is exported. One request at a time, on a
worker thread, with a plain KV-cached decode loop (so stop strings, cancel and seeds behave as
in the llama.cpp engine)."""

from __future__ import annotations

import collections
import inspect
import queue
import random
import threading
from pathlib import Path
from typing import Any

from cuvee.engine.base import (
    EngineError,
    Finished,
    FinishReason,
    Handle,
    Request,
    StopFilter,
    TokenEvent,
    TokenLogprob,
    context_error,
    penalty_window,
    top_logprobs,
)
from cuvee.errors import ConfigError, ModelFileError

_DECODE_CONTEXT = 4  # prompt tokens decoded with the completion, so word spacing comes out right
_CLOSE = object()


class HFEngine:
    """Runs a causal LM directory (safetensors, tokenizer, optional chat template)."""

    name = "hf"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "float32",
        device: str | None = None,
        n_threads: int | None = None,
        context_length: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise ModelFileError(f"{path}: not a Hugging Face model directory (no config.json)")
        if n_threads:
            torch.set_num_threads(n_threads)
        try:
            torch_dtype = getattr(torch, dtype)
        except AttributeError:
            raise ConfigError(
                f"unknown dtype {dtype!r}", hint="float32, bfloat16 or float16"
            ) from None
        self._torch = torch
        self.model_dir = path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._tok = AutoTokenizer.from_pretrained(path)
        self._model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        self._model.to(self.device).eval()
        # transformers 5.2x renamed forward's ``past_key_values`` to ``cache`` (the old name
        # warns, and goes in 5.40); older releases know only the old one
        forward = inspect.signature(self._model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        config = self._model.config
        limit = getattr(config, "max_position_embeddings", None) or 2048
        self._context_length = min(context_length or limit, limit)
        self.chat_template = getattr(self._tok, "chat_template", None)
        self._eog = self._eog_ids()
        self._prefix = self._special_prefix()  # what the tokenizer puts first, e.g. [bos]
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cuvee-hf", daemon=True)
        self._thread.start()

    @property
    def context_length(self) -> int:
        return self._context_length

    def _special_prefix(self) -> list[int]:
        plain = self._tok("a", add_special_tokens=False)["input_ids"]
        marked = self._tok("a", add_special_tokens=True)["input_ids"]
        return marked[: marked.index(plain[0])] if plain and plain[0] in marked else []

    def _eog_ids(self) -> set[int]:
        ids: set[int] = set()
        gen = getattr(self._model, "generation_config", None)
        for value in (getattr(gen, "eos_token_id", None), self._tok.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif value:
                ids.update(int(v) for v in value)
        return ids

    def submit(self, request: Request) -> Handle:
        request.validate()
        p = request.params
        if request.lora is not None:
            raise ConfigError(
                "the hf engine runs complete weights, not per-request LoRA adapters",
                hint="merge the adapter (cuvee export --format hf) or use the llamacpp engine",
            )
        if p.grammar is not None or p.json_schema is not None:
            raise ConfigError(
                "grammars and JSON schemas need the llamacpp engine", hint="--engine llamacpp"
            )
        tokens = self.prompt_tokens(request)
        if not tokens:
            raise ConfigError("the prompt is empty (no tokens)")
        if len(tokens) >= self._context_length:
            raise context_error(len(tokens), self._context_length)
        handle = Handle()
        with self._lock:
            if self._closed:
                raise EngineError("the engine is closed")
            self._inbox.put((handle, request, tokens))
        return handle

    def prompt_tokens(self, request: Request) -> list[int]:
        text = (
            request.prompt if request.messages is None else self.render_messages(request.messages)
        )
        ids = self._tok(text or "", add_special_tokens=False)["input_ids"]
        if self._prefix and ids[: len(self._prefix)] != self._prefix:
            ids = self._prefix + ids
        return ids

    def render_messages(self, messages: list[dict[str, Any]]) -> str:
        if not self.chat_template:
            raise ConfigError(
                f"{self.model_dir} has no chat template", hint="send a raw prompt instead"
            )
        return self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True  # what is queued or running ends "cancelled"
            self._inbox.put(_CLOSE)
        self._thread.join()

    def __enter__(self) -> HFEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if item is _CLOSE:
                return
            handle, request, tokens = item
            if handle.cancelled or self._closed:
                handle.emit(Finished("cancelled", len(tokens), 0))
                continue
            try:
                self._generate(handle, request, tokens)
            except Exception as exc:
                handle.emit(Finished("error", len(tokens), 0, f"{type(exc).__name__}: {exc}"))

    def _generate(self, handle: Handle, request: Request, tokens: list[int]) -> None:
        torch = self._torch
        p = request.params
        generator = torch.Generator(device=self.device)
        generator.manual_seed(p.seed if p.seed is not None else random.randrange(2**63))
        stop = StopFilter(p.stop)
        context = tokens[-_DECODE_CONTEXT:]
        base_text = self._tok.decode(context, skip_special_tokens=True)
        generated: list[int] = []
        new = ""  # the completion decoded so far
        released = 0  # characters of ``new`` already passed to ``stop``
        past = None
        feed = torch.tensor([tokens], device=self.device)
        n_past = 0

        def finish(
            reason: FinishReason, token: int | None, text: str = "", lp: TokenLogprob | None = None
        ) -> None:
            tail, stopped = stop.feed(new[released:])
            final = text + tail + ("" if stopped else stop.flush())
            if final or token is not None:
                handle.emit(TokenEvent(final, token, lp))
            handle.emit(Finished(reason, len(tokens), len(generated)))

        with torch.no_grad():
            while True:
                if handle.cancelled or self._closed:
                    handle.emit(Finished("cancelled", len(tokens), len(generated)))
                    return
                out = self._model(input_ids=feed, use_cache=True, **{self._cache_arg: past})
                past = getattr(out, self._cache_arg)
                n_past += feed.shape[1]
                logits = out.logits[0, -1].float()
                # before _choose, which penalises the logits in place
                raw = None if p.logprobs is None else logits.log_softmax(-1).cpu().numpy()
                token = self._choose(logits, generated, p, generator)
                lp = None if raw is None else top_logprobs(raw, token, p.logprobs, self._piece)
                generated.append(token)
                if not p.ignore_eos and token in self._eog:
                    return finish("stop", None)
                text = self._tok.decode(context + generated, skip_special_tokens=True)
                new = text[len(base_text) :]
                piece = ""
                if not new.endswith("\ufffd"):  # else a character still misses bytes
                    piece, released = new[released:], len(new)
                out_text, stopped = stop.feed(piece)
                if stopped:
                    handle.emit(TokenEvent(out_text, token, lp))
                    handle.emit(Finished("stop", len(tokens), len(generated)))
                    return
                if len(generated) >= p.max_tokens or n_past >= self._context_length:
                    return finish("length", token, out_text, lp)
                handle.emit(TokenEvent(out_text, token, lp))
                feed = torch.tensor([[token]], device=self.device)

    def _piece(self, token: int) -> bytes:
        """A token's text as the tokenizer decodes it alone (a tokenizer that strips a leading
        space when decoding loses it here; llama.cpp's pieces keep it)."""
        text = self._tok.decode([token], skip_special_tokens=False)
        return text.encode("utf-8")

    def _choose(self, logits: Any, generated: list[int], p: Any, generator: Any) -> int:
        """The next token, with llama.cpp's order of samplers: penalty, top-k, top-p, min-p,
        temperature, then a draw (or the arg-max when temperature is 0)."""
        torch = self._torch
        penalized = p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty
        if penalized and generated:
            counts = collections.Counter(generated[-penalty_window(p) :])
            recent = torch.tensor(sorted(counts), device=logits.device)
            n = torch.tensor([counts[t] for t in sorted(counts)], device=logits.device)
            values = logits[recent]
            values = torch.where(values > 0, values / p.repeat_penalty, values * p.repeat_penalty)
            logits[recent] = values - n * p.frequency_penalty - p.presence_penalty
        if p.temperature == 0:
            return int(torch.argmax(logits))
        if p.top_k > 0:
            kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            drop = cumulative - sorted_probs >= p.top_p  # keep the smallest set reaching top_p
            probs[order[drop]] = 0
        if p.min_p > 0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0)
        logits = torch.log(probs) / p.temperature
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator))
