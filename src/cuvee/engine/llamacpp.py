"""A llama.cpp engine with continuous batching: one scheduler thread owns the context and, every
step, decodes one token for each running sequence plus a chunk of a waiting prompt in a single
``llama_decode``, so many streams share each pass over the weights and a long prompt never
stalls the ones already streaming.

LoRA: llama.cpp applies adapters to a whole context (``llama_set_adapters_lora``), not per
sequence, so sequences with different adapters never share a step: each step serves one
adapter group, round-robin over the groups with work. Throughput is shared between groups.

Size: one class over one native context, which only the scheduler thread touches once the
engine is open; its methods share that rule and the native handles, so they stay together. What
needs neither (how a step's sequences are cut into ubatches and padded) is in ``layout``."""

from __future__ import annotations

import codecs
import collections
import ctypes
import heapq
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp as llama

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
    log_softmax,
    penalty_window,
    top_logprobs,
)
from cuvee.engine.layout import Feed, plan_padding
from cuvee.errors import ConfigError, ModelFileError
from cuvee.native import captured_stderr
from cuvee.native.probe import engine_verdict

# llama.cpp's log lines, kept (not printed) so a failure can quote them.
_NATIVE_LOG: collections.deque[str] = collections.deque(maxlen=40)


@llama.llama_log_callback
def _keep_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    _NATIVE_LOG.append(text.decode("utf-8", "replace"))


_BACKEND_READY = False
_DEFAULT_SEQ_CTX = 2048  # tokens a sequence may hold when n_ctx is not given
# How long a scheduler waking for one request waits, at most, for others of the same burst.
GATHER_S = 0.03


def _native_tail() -> str:
    lines = "".join(_NATIVE_LOG).strip().splitlines()
    return "\n".join(lines[-5:])


def _init_backend() -> None:
    global _BACKEND_READY
    llama.llama_log_set(_keep_log, ctypes.c_void_p(0))
    if not _BACKEND_READY:
        llama.llama_backend_init()
        _BACKEND_READY = True


@dataclass(eq=False)
class _Sequence:
    """A request inside the scheduler: its prompt, KV slot, sampler and text state."""

    handle: Handle
    request: Request
    tokens: list[int]  # to prefill: the prompt, plus what it generated if it was preempted
    sampler: Any  # llama_sampler pointer (a chain), owned here
    n_prompt: int = 0
    # the chain is greedy alone (no grammar, no penalties): the token is the logits' argmax,
    # taken here without the sampler's copy of the whole vocabulary into candidates
    argmax: bool = False
    seq_id: int = -1
    n_prefilled: int = 0
    n_past: int = 0
    next_token: int | None = None  # sampled, to be fed at the next step
    completion_tokens: int = 0
    generated: list[int] = field(default_factory=list)  # fed or to be fed
    utf8: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    stop: StopFilter | None = None
    ended: bool = False

    @property
    def prefilling(self) -> bool:
        return self.n_prefilled < len(self.tokens)


_WAKE = object()  # nudges the scheduler (a cancel)
_CLOSE = object()


class LlamaCppEngine:
    """Serves one GGUF model (and optional GGUF LoRA adapters over it) to up to ``n_seq_max``
    concurrent sequences; more requests wait their turn. The KV cache has ``n_ctx`` cells.

    By default each sequence owns ``n_ctx / n_seq_max`` cells (its own KV stream; ``n_ctx``
    defaults to ``n_seq_max`` x 2048, capped by the model's training context): attention then
    only reads a sequence's own cells, which keeps prompt processing under load and long
    contexts fast. With ``kv_unified`` the cells are shared (``n_ctx`` defaults to 4 x 2048) and
    one sequence may use all of them: a request is admitted when its prompt fits beside what
    running ones hold, and when cells run out the newest sequence is preempted (its cells freed;
    it later re-reads its prompt and output and continues, the client sees only a pause). Every
    token then attends over all cells in use, masked, so that mode is slower with many long
    sequences.

    ``prefill_chunk`` bounds the prompt tokens added to a step while other sequences stream;
    with nobody streaming prompts go in ``n_batch`` tokens at a time. Waiting prompts share
    that budget, oldest first, ``prefill_seqs`` of them at most (default: all): a burst of
    short prompts is read in one step instead of one prompt a step, so the last of 16 clients
    does not wait 15 steps for its first token. ``loras`` maps names to GGUF LoRA files,
    chosen by ``Request.lora``. ``chat_template`` is used when the GGUF carries none."""

    name = "llamacpp"

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int | None = None,
        n_seq_max: int = 16,
        n_threads: int | None = None,
        prefill_chunk: int = 128,
        prefill_seqs: int | None = None,
        n_batch: int = 512,
        kv_unified: bool = False,
        loras: Mapping[str, str | Path] | None = None,
        chat_template: str | None = None,
        n_gpu_layers: int = 0,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise ModelFileError(f"{path}: no such GGUF file")
        if prefill_seqs is None:
            prefill_seqs = n_seq_max
        if n_seq_max < 1 or prefill_chunk < 1 or prefill_seqs < 1:
            raise ConfigError("n_seq_max, prefill_chunk and prefill_seqs must be at least 1")
        self.model_path = path
        self.n_seq_max = n_seq_max
        self.prefill_chunk = prefill_chunk
        self.prefill_seqs = prefill_seqs
        self.n_batch = max(n_batch, prefill_chunk + n_seq_max)
        self.kv_unified = kv_unified
        self._model = self._ctx = None
        self._adapters: dict[str | None, Any] = {None: None}
        _init_backend()
        # Probed once per machine and build in a child process: where weight repacking
        # crashes (llama.cpp's AMX kernels on many Xeons) the engine runs without it.
        repack = engine_verdict().repack
        with captured_stderr():
            mparams = llama.llama_model_default_params()
            mparams.n_gpu_layers = n_gpu_layers
            mparams.use_extra_bufts = repack
            self._model = llama.llama_model_load_from_file(str(path).encode(), mparams)
        if not self._model:
            raise ModelFileError(f"llama.cpp cannot load {path}", hint=_native_tail() or None)
        self._vocab = llama.llama_model_get_vocab(self._model)
        self.n_ctx_train = llama.llama_model_n_ctx_train(self._model)
        threads = n_threads or os.cpu_count() or 1
        if n_ctx is None:
            per_sequence = min(self.n_ctx_train or _DEFAULT_SEQ_CTX, _DEFAULT_SEQ_CTX)
            n_ctx = per_sequence * (4 if kv_unified else n_seq_max)
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = self.n_batch
        cparams.n_seq_max = n_seq_max
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.kv_unified = kv_unified
        cparams.no_perf = True
        with captured_stderr():
            self._ctx = llama.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self._free_native()
            raise EngineError(
                f"llama.cpp cannot create a context of {n_ctx} cells for {n_seq_max} sequences",
                hint=_native_tail() or "try a smaller n_ctx",
            )
        self.n_ctx = llama.llama_n_ctx(self._ctx)
        # a sequence never runs past what the model was trained on, whatever the cache holds
        self._context_length = llama.llama_n_ctx_seq(self._ctx)
        if self.n_ctx_train > 0:
            self._context_length = min(self._context_length, self.n_ctx_train)
        self._memory = llama.llama_get_memory(self._ctx)
        # Prompt chunks are right-padded to equal lengths (engine.layout) only where that is
        # exact: KV streams of their own (a unified cache is split without such cuts), pure
        # attention (a recurrent state cannot drop the pads), and positions inside the
        # sliding window, so no padding pushes a real token's cells out of it.
        recurrent = llama.llama_model_is_recurrent(self._model) or llama.llama_model_is_hybrid(
            self._model
        )
        n_swa = llama.llama_model_n_swa(self._model)
        self._pad_limit = 0 if kv_unified or recurrent else self._context_length
        if n_swa > 0:
            self._pad_limit = min(self._pad_limit, n_swa)
        for lora_name, lora_path in (loras or {}).items():
            try:
                self._adapters[lora_name] = self._load_lora(lora_name, lora_path)
            except ModelFileError:
                self._free_native()
                raise
        self._n_vocab = llama.llama_vocab_n_tokens(self._vocab)
        self._bos = llama.llama_vocab_bos(self._vocab)
        self._add_bos = bool(llama.llama_vocab_get_add_bos(self._vocab)) and self._bos >= 0
        # a pretrained base's GGUF has no template: the caller may supply its family's
        self.chat_template = self._meta("tokenizer.chat_template") or chat_template

        # Counters for metrics and tests: decode steps, prompt chunks, tokens decoded.
        self.stats = {
            "steps": 0,
            "prefill_chunks": 0,
            "tokens": 0,
            "max_batch": 0,
            "preemptions": 0,
            "pad_tokens": 0,
        }
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._arrivals: Callable[[], int] | None = None
        self.gather_s = GATHER_S
        # Held by submit and close: no request is queued after the scheduler stopped reading
        # (its handle would never finish), and the model is not freed under a tokenizer.
        self._lock = threading.RLock()
        self._closed = False
        self._failure: str | None = None
        self._thread = threading.Thread(target=self._run, name="cuvee-llamacpp", daemon=True)
        self._thread.start()

    # -- public interface ----------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def adapters(self) -> list[str]:
        return [n for n in self._adapters if n is not None]

    def submit(self, request: Request) -> Handle:
        request.validate()
        with self._lock:  # the model cannot be freed while its vocabulary is in use
            self._check_running()
            if request.lora not in self._adapters:
                known = ", ".join(self.adapters) or "none"
                raise ConfigError(
                    f"no LoRA adapter {request.lora!r} on this engine", hint=f"loaded: {known}"
                )
            tokens = self.prompt_tokens(request)
            if len(tokens) >= self._context_length:
                detail = "" if self.kv_unified else f" ({self.n_ctx} cells over {self.n_seq_max})"
                raise context_error(len(tokens), self._context_length, detail)
            if not tokens:
                raise ConfigError("the prompt is empty (no tokens)")
            sampler, argmax = self._make_sampler(request)
            seq = _Sequence(
                Handle(on_cancel=lambda: self._inbox.put(_WAKE)),
                request,
                tokens,
                sampler,
                n_prompt=len(tokens),
                argmax=argmax,
                stop=StopFilter(request.params.stop),
            )
            self._inbox.put(seq)
        return seq.handle

    def set_arrivals(self, count: Callable[[], int]) -> None:
        """``count()`` tells how many requests are on their way to this engine (a server's,
        between arrival and submit). The scheduler, woken from idle by one request, then waits
        (up to ``gather_s``) while others are coming and reads all their prompts in one step:
        sixteen clients arriving together get their first tokens after one prefill, not after
        the first client's own step and then one for the rest."""
        self._arrivals = count

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Add a GGUF LoRA adapter while the engine runs (the server loads each BASE:ADAPTER
        on first use): requests may name it as soon as this returns. llama.cpp reads the
        adapter beside the model without touching the model's tensors, so decoding goes on
        meanwhile; the scheduler only sees the adapter once it is in the table."""
        if not name:
            raise ConfigError("an adapter needs a name")
        with self._lock:
            self._check_running()
            if name in self._adapters:
                raise ConfigError(f"an adapter named {name!r} is already loaded")
        adapter = self._load_lora(name, path)
        with self._lock:
            if self._closed or name in self._adapters:
                llama.llama_adapter_lora_free(adapter)
                self._check_running()
                raise ConfigError(f"an adapter named {name!r} is already loaded")
            self._adapters[name] = adapter

    def _load_lora(self, name: str, path: str | Path) -> Any:
        with captured_stderr():
            adapter = llama.llama_adapter_lora_init(self._model, str(path).encode())
        if not adapter:
            raise ModelFileError(
                f"llama.cpp cannot load LoRA adapter {name!r} from {path}",
                hint=_native_tail() or "is it a GGUF LoRA made for this base model?",
            )
        return adapter

    def _check_running(self) -> None:
        if self._closed:
            raise EngineError("the engine is closed")
        if self._failure:
            raise EngineError(f"the engine stopped after an internal error: {self._failure}")

    def prompt_tokens(self, request: Request) -> list[int]:
        text = (
            request.prompt if request.messages is None else self.render_messages(request.messages)
        )
        tokens = self.tokenize(text or "")
        if self._add_bos and tokens[:1] != [self._bos]:
            tokens.insert(0, self._bos)
        return tokens

    def render_messages(self, messages: list[dict[str, Any]]) -> str:
        if not self.chat_template:
            raise ConfigError(
                f"{self.model_path.name} has no chat template (tokenizer.chat_template)",
                hint="send a raw prompt instead of messages",
            )
        from jinja2.exceptions import TemplateError

        from cuvee.chat_template import compile_template

        try:
            template = compile_template(self.chat_template, trim=True)
        except TemplateError as exc:
            raise ConfigError(f"the model's chat template does not parse: {exc}") from exc
        # An assistant message last is an answer to go on with (a prefill, as llama-server and
        # vLLM's continue_final_message take it): the prompt ends with its text, not its turn's
        # end, so the model continues it (a gateway resumes a broken stream this way).
        final = messages[-1] if messages else {}
        content = final.get("content") if final.get("role") == "assistant" else None
        going_on = isinstance(content, str) and bool(content.strip())
        try:
            text = template.render(
                messages=messages,
                add_generation_prompt=not going_on,
                bos_token=self._token_text(self._bos),
                eos_token=self._token_text(llama.llama_vocab_eos(self._vocab)),
            )
        except TemplateError as exc:
            raise ConfigError(f"the chat template refused the messages: {exc}") from exc
        if going_on:
            # the answer so far exactly as it was written, its leading and trailing
            # whitespace included (templates trim a message): the model goes on after its
            # last character, so a resumed stream neither drops nor repeats a space or line
            assert isinstance(content, str)
            start = text.rfind(content.strip())
            if start >= 0:
                text = text[:start] + content
        return text

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``, special tokens written as text parsed as such, no BOS."""
        data = text.encode("utf-8")
        size = len(data) + 8
        with self._lock:
            if self._model is None:
                raise EngineError("the engine is closed")
            for _ in range(2):
                buf = (llama.llama_token * size)()
                n = llama.llama_tokenize(self._vocab, data, len(data), buf, size, False, True)
                if n >= 0:
                    return list(buf[:n])
                size = -n
        raise EngineError("llama.cpp could not tokenize the prompt")

    def close(self) -> None:
        """Cancel what is running, stop the scheduler and free llama.cpp's memory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._inbox.put(_CLOSE)
        self._thread.join()
        with self._lock:
            self._free_native()

    def __enter__(self) -> LlamaCppEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- native helpers ------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        size = 1 << 16
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama.llama_model_meta_val_str(self._model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", "replace")
            size = n + 1

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return (llama.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", "replace")

    def _make_sampler(self, request: Request) -> tuple[Any, bool]:
        """The request's llama.cpp sampler chain, and whether it is plain greedy."""
        p = request.params
        grammar = p.gbnf()
        cparams = llama.llama_sampler_chain_default_params()
        cparams.no_perf = True
        chain = llama.llama_sampler_chain_init(cparams)
        if grammar is not None:
            g = llama.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
            if not g:
                llama.llama_sampler_free(chain)
                raise ConfigError("llama.cpp cannot parse the grammar", hint=_native_tail())
            llama.llama_sampler_chain_add(chain, g)
        penalised = bool(p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty)
        if penalised:
            # the binding declares a leading n_vocab that newer llama.cpp dropped: passing the
            # window twice gives the same penalty whichever signature the library has (the
            # floats travel in their own registers either way)
            n = penalty_window(p)
            penalties = llama.llama_sampler_init_penalties(
                n, n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
            )
            llama.llama_sampler_chain_add(chain, penalties)
        if p.temperature == 0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
            return chain, grammar is None and not penalised
        if p.top_k > 0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_min_p(p.min_p, 1))
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_temp(p.temperature))
        seed = llama.LLAMA_DEFAULT_SEED if p.seed is None else p.seed & 0xFFFFFFFF
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_dist(seed))
        return chain, False

    def _piece(self, token: int, special: bool = False) -> bytes:
        """A token's bytes; control tokens (end of turn ...) are empty unless ``special``."""
        n = llama.llama_token_to_piece(self._vocab, token, self._piece_buf, 256, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
            return buf.raw[:n]
        return self._piece_buf.raw[:n]

    def _special_piece(self, token: int) -> bytes:
        return self._piece(token, special=True)

    def _free_native(self) -> None:
        for name, adapter in list(self._adapters.items()):
            if adapter is not None:
                llama.llama_adapter_lora_free(adapter)
            self._adapters.pop(name)
        self._adapters[None] = None
        if self._ctx:
            llama.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama.llama_model_free(self._model)
            self._model = None

    # -- the scheduler (runs on its own thread; the only user of the context) -------------

    def _run(self) -> None:
        self._piece_buf = ctypes.create_string_buffer(256)
        self._batch = llama.llama_batch_init(self.n_batch, 0, 1)
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._active: list[_Sequence] = []  # in admission order
        self._free_ids = list(range(self.n_seq_max))  # a heap: the lowest free id first
        self._adapter_now: str | None = None
        self._last_group: str | None = None
        try:
            while self._receive():
                self._drop_cancelled()
                self._admit()
                if self._active:
                    self._step()
        except BaseException as exc:  # a bug or a native failure: fail loudly, not silently
            with self._lock:
                self._failure = f"{type(exc).__name__}: {exc}"
            for seq in [*self._active, *self._waiting, *self._queued()]:
                self._end(seq, "error", error=f"engine failure: {self._failure}")
        finally:
            for seq in [*self._active, *self._waiting, *self._queued()]:
                self._end(seq, "cancelled")
            llama.llama_batch_free(self._batch)

    def _queued(self) -> list[_Sequence]:
        items = []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                return [i for i in items if isinstance(i, _Sequence)]

    def _receive(self) -> bool:
        """Take new requests; block while there is nothing to do. False once closing."""
        idle = not self._active and not self._waiting
        while True:
            try:
                item = self._inbox.get(block=idle)
            except queue.Empty:
                return True
            if item is _CLOSE:
                return False
            if isinstance(item, _Sequence):
                self._waiting.append(item)
                if idle:
                    self._gather()
            idle = False

    def _gather(self) -> None:
        """Wait, while the server counts requests on their way, for them to arrive."""
        count = self._arrivals
        if count is None:
            return
        deadline = time.monotonic() + self.gather_s
        while count() > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                item = self._inbox.get(timeout=min(left, 0.002))
            except queue.Empty:
                continue
            if item is _CLOSE:
                self._inbox.put(_CLOSE)  # read again by _receive, which stops
                return
            if isinstance(item, _Sequence):
                self._waiting.append(item)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._waiting if s.handle.cancelled]:
            self._waiting.remove(seq)
            self._end(seq, "cancelled")
        for seq in [s for s in self._active if s.handle.cancelled]:
            self._end(seq, "cancelled")

    def _admit(self) -> None:
        """Give free slots to waiting requests, first come first served. With a unified cache
        a request also waits until the cells its prompt needs are not promised to others.
        Requests admitted together get their ids in the order of their prompts' lengths, so
        llama.cpp's per-stream split (engine.layout) cuts their prompts into fewer ubatches."""
        admitted: list[_Sequence] = []
        while self._waiting and len(admitted) < len(self._free_ids):
            seq = self._waiting[0]
            if self.kv_unified:
                running = [*self._active, *admitted]
                promised = sum(max(a.n_past, len(a.tokens)) + 1 for a in running)
                # headroom for the running ones to grow, so admission does not cause at once
                # the preemption that undoes it
                if promised + len(seq.tokens) + self.n_ctx // 16 > self.n_ctx and running:
                    break  # no overtaking: a long prompt is not starved by short ones
            admitted.append(self._waiting.popleft())
        ids = sorted(heapq.heappop(self._free_ids) for _ in admitted)
        by_length = sorted(admitted, key=lambda s: len(s.tokens) - s.n_prefilled)
        for seq, seq_id in zip(by_length, ids, strict=True):
            seq.seq_id = seq_id
        self._active.extend(admitted)

    def _preempt(self, seq: _Sequence) -> None:
        """Free a sequence's cells for older ones; it goes back to the head of the queue and
        later re-reads its prompt and what it generated, then goes on where it stopped (its
        sampler keeps its state), so the client only sees a pause."""
        llama.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
        self._active.remove(seq)
        heapq.heappush(self._free_ids, seq.seq_id)
        seq.seq_id = -1
        seq.tokens = seq.tokens[: seq.n_prompt] + seq.generated
        seq.n_prefilled = seq.n_past = 0
        seq.next_token = None
        self._waiting.appendleft(seq)
        self.stats["preemptions"] += 1

    def _pick_group(self) -> str | None:
        """The adapter this step serves: round-robin over the adapters with work."""
        groups = sorted({s.request.lora for s in self._active}, key=lambda g: (g is not None, g))
        if self._last_group not in groups:
            return groups[0]
        return groups[(groups.index(self._last_group) + 1) % len(groups)]

    def _use_adapter(self, name: str | None) -> None:
        if name == self._adapter_now:
            return
        if name is None:
            rc = llama.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            adapters = (llama.llama_adapter_lora_p_ctypes * 1)(self._adapters[name])
            scales = (ctypes.c_float * 1)(1.0)
            rc = llama.llama_set_adapters_lora(self._ctx, adapters, 1, scales)
        if rc != 0:
            raise EngineError(f"llama.cpp could not apply LoRA adapter {name!r} (code {rc})")
        self._adapter_now = name

    def _plan(self, group: str | None) -> list[tuple[_Sequence, int]]:
        """(sequence, tokens to feed) for this step: one for each decoding sequence, then
        prompt chunks. While at least as many sequences stream as prompts wait, they share a
        chunk of ``prefill_chunk`` tokens (a long prompt does not stall the streams); else
        they fill the batch (sixteen clients arriving at once wait one step, not three)."""
        members = [s for s in self._active if s.request.lora == group]
        plan = [(s, 1) for s in members if s.next_token is not None]
        prefilling = [s for s in members if s.prefilling][: self.prefill_seqs]
        if plan and len(plan) >= len(prefilling):
            budget = self.prefill_chunk
        else:
            budget = self.n_batch - len(plan)
        for seq in prefilling:
            if budget <= 0:
                break
            take = min(budget, len(seq.tokens) - seq.n_prefilled)
            plan.append((seq, take))
            budget -= take
        return plan

    def _step(self) -> None:
        group = self._pick_group()
        plan = self._plan(group)
        while self.kv_unified and len(self._active) > 1:
            held = sum(s.n_past for s in self._active)
            if held + sum(take for _, take in plan) <= self.n_ctx:
                break
            self._preempt(self._active[-1])  # the newest yields to the older ones
            group = self._pick_group()
            plan = self._plan(group)
        self._last_group = group
        self._use_adapter(group)
        # ascending seq ids: llama.cpp cuts a batch that is not into more, slower ubatches
        plan.sort(key=lambda item: item[0].seq_id)
        pads = self._padding(plan)
        batch = self._batch
        outputs: list[tuple[_Sequence, int]] = []
        n = 0
        for (seq, take), pad in zip(plan, pads, strict=True):
            if seq.next_token is not None:
                tokens, start = [seq.next_token], seq.n_past
            else:
                tokens, start = seq.tokens[seq.n_prefilled : seq.n_prefilled + take], seq.n_past
            last = seq.next_token is not None or seq.n_prefilled + take == len(seq.tokens)
            if last:
                outputs.append((seq, n + len(tokens) - 1))
            # pads repeat the last token after it: no real token attends to them
            for i, token in enumerate(tokens + tokens[-1:] * pad):
                batch.token[n] = token
                batch.pos[n] = start + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq.seq_id
                batch.logits[n] = last and i == len(tokens) - 1
                n += 1
        batch.n_tokens = n
        rc = llama.llama_decode(self._ctx, batch)
        stats = self.stats
        stats["steps"] += 1
        stats["tokens"] += n
        stats["max_batch"] = max(stats["max_batch"], n)
        if rc == 1 and self.kv_unified and len(self._active) > 1:
            self._preempt(self._active[-1])  # no contiguous room: retry with fewer
            return
        if rc != 0:
            # the KV state of these sequences is unknown now: end them, keep serving the rest
            reason = {1: "no free KV cells", 2: "aborted", -1: "invalid batch"}.get(rc, "error")
            for seq, _ in plan:
                self._end(seq, "error", error=f"llama_decode failed ({reason}, code {rc})")
            return
        for (seq, take), pad in zip(plan, pads, strict=True):
            if seq.next_token is not None:
                seq.next_token = None
            else:
                seq.n_prefilled += take
                stats["prefill_chunks"] += 1
            seq.n_past += take
            if pad:
                if not llama.llama_memory_seq_rm(self._memory, seq.seq_id, seq.n_past, -1):
                    raise EngineError(
                        f"llama.cpp could not drop the padding of sequence {seq.seq_id}"
                    )
                stats["pad_tokens"] += pad
        for seq, idx in outputs:
            if seq.argmax:
                # what llama.cpp's greedy sampler returns (the first maximum), at a tenth of its
                # cost on a large vocabulary: a 16-stream step spent 4 ms of its 70 sampling
                token = int(self._logits(idx).argmax())
            else:
                token = llama.llama_sampler_sample(seq.sampler, self._ctx, idx)
            n = seq.request.params.logprobs
            self._accept(seq, token, None if n is None else self._logprob(idx, token, n))

    def _padding(self, plan: list[tuple[_Sequence, int]]) -> list[int]:
        """Pad tokens after each sequence's tokens in a step (engine.layout): only steps that
        read two prompts or more can gain, and only positions inside the padding limit pad.
        A decoding sequence may pad too (its one token then joins the prompts' ubatch)."""
        if not self._pad_limit or sum(seq.next_token is None for seq, _ in plan) < 2:
            return [0] * len(plan)
        feeds = [
            Feed(
                seq.seq_id,
                take,
                max(0, self._pad_limit - seq.n_past - take),
            )
            for seq, take in plan
        ]
        return plan_padding(feeds, self.n_batch, self.n_batch)

    def _logprob(self, idx: int, token: int, n: int) -> TokenLogprob:
        """The sampled token's log-probability under the model (raw logits of output ``idx``;
        the sampler chain copies them, so they are still the model's), only for requests that
        asked: a softmax over the whole vocabulary is not free."""
        return top_logprobs(log_softmax(self._logits(idx)), token, n, self._special_piece)

    def _logits(self, idx: int) -> Any:
        """Output ``idx``'s logits as a numpy view of llama.cpp's buffer (valid until the next
        decode)."""
        import numpy as np

        return np.ctypeslib.as_array(
            llama.llama_get_logits_ith(self._ctx, idx), shape=(self._n_vocab,)
        )

    def _accept(self, seq: _Sequence, token: int, logprob: TokenLogprob | None = None) -> None:
        """Turn a sampled token into text, and decide whether the sequence goes on."""
        seq.completion_tokens += 1
        params = seq.request.params
        assert seq.stop is not None
        if not params.ignore_eos and llama.llama_vocab_is_eog(self._vocab, token):
            rest = seq.stop.feed(seq.utf8.decode(b"", final=True))[0] + seq.stop.flush()
            if rest:
                seq.handle.emit(TokenEvent(rest, None))
            self._end(seq, "stop")
            return
        text, stopped = seq.stop.feed(seq.utf8.decode(self._piece(token)))
        if stopped:
            seq.handle.emit(TokenEvent(text, token, logprob))
            self._end(seq, "stop")
            return
        # the token sampled now must be fed next step at position n_past: is there room?
        full = seq.n_past >= self._context_length
        if seq.completion_tokens >= params.max_tokens or full:
            tail, stopped = seq.stop.feed(seq.utf8.decode(b"", final=True))
            rest = text + tail + ("" if stopped else seq.stop.flush())
            seq.handle.emit(TokenEvent(rest, token, logprob))
            self._end(seq, "stop" if stopped else "length")
            return
        seq.handle.emit(TokenEvent(text, token, logprob))
        seq.next_token = token
        seq.generated.append(token)

    def _end(self, seq: _Sequence, reason: FinishReason, error: str | None = None) -> None:
        """Finish a request: free its KV cells and slot at once, tell the client."""
        if seq.ended:
            return
        seq.ended = True
        if seq in self._active:
            self._active.remove(seq)
            llama.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
            heapq.heappush(self._free_ids, seq.seq_id)
        if seq.sampler:
            llama.llama_sampler_free(seq.sampler)
            seq.sampler = None
        seq.handle.emit(Finished(reason, seq.n_prompt, seq.completion_tokens, error))
