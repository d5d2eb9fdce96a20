"""OpenAI's legacy text completions (``POST /v1/completions``) <-> engine requests and events.

The prompt (a string or a list of strings) is sent as is, without the chat template. Sampling
parameters map as for chat (see ``openai_chat``); ``echo`` puts the prompt before the text;
``max_tokens`` defaults to 16 as OpenAI's does. ``logprobs`` (0-5) gives each token's
log-probability and that many alternatives in the legacy shape (tokens, token_logprobs,
top_logprobs, text_offset). Prompts given as token ids, ``suffix``, ``best_of`` above 1 and
``logprobs`` with ``echo`` (the prompt's own logprobs are not computed) are refused by name.
Choice ``i * n + j`` is the j-th completion of the i-th prompt, as OpenAI numbers them."""

from __future__ import annotations

from typing import Any

from cuvee.engine.base import Request, TokenLogprob
from cuvee.serve import errors
from cuvee.serve.generation import Envelope, Held, Plan
from cuvee.serve.openai_chat import check_sampling, sampling_params
from cuvee.serve.schemas import COMPLETIONS_DEFAULT_MAX_TOKENS, MAX_N, CompletionRequest


def prompts_of(body: CompletionRequest) -> list[str]:
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise errors.invalid_param("'prompt' is an empty list.", "prompt")
    if not all(isinstance(p, str) for p in prompt):
        raise errors.unsupported("prompt", "prompts as token ids; send the text instead")
    return [p for p in prompt if isinstance(p, str)]


def completion_plan(body: CompletionRequest) -> tuple[Plan, list[str]]:
    """The plan, and the prompts (for ``echo``)."""
    check_sampling(body)
    if body.suffix:
        raise errors.unsupported("suffix", "fill-in-the-middle is not available")
    if body.best_of is not None and body.best_of > 1:
        raise errors.unsupported("best_of", "ranking candidates needs log probabilities")
    if body.logprobs is not None and body.echo:
        raise errors.unsupported("logprobs", "with 'echo': the prompt's logprobs are not computed")
    prompts = prompts_of(body)
    if len(prompts) * body.n > MAX_N:
        raise errors.invalid_param(
            f"{len(prompts)} prompts x n={body.n} asks for more than {MAX_N} completions at once.",
            "n",
        )
    requests, prompt_of = [], []
    for i, text in enumerate(prompts):
        for j in range(body.n):
            params = sampling_params(body, j, logprobs=body.logprobs)
            requests.append(Request(prompt=text, params=params))
            prompt_of.append(i)
    plan = Plan(
        requests=requests,
        prompt_of=prompt_of,
        max_tokens=body.max_tokens,
        default_max_tokens=COMPLETIONS_DEFAULT_MAX_TOKENS,
        param="prompt",
    )
    return plan, prompts


class CompletionFormatter(Envelope):
    """``text_completion`` objects (whole or as stream chunks), one id per response."""

    chunk_object = "text_completion"

    def __init__(
        self,
        model: str,
        prompts: list[str],
        n: int,
        echo: bool,
        include_usage: bool,
        logprobs: int | None = None,
    ) -> None:
        super().__init__("cmpl", model, include_usage)
        self.prompts = prompts
        self.n = n
        self.echo = echo
        self.logprobs = logprobs
        self.held = [Held() for _ in range(len(prompts) * n)]
        self.offsets = [0] * (len(prompts) * n)  # characters of each choice's text so far

    def _logprobs(self, index: int, entries: list[TokenLogprob]) -> dict[str, Any] | None:
        """The legacy shape; ``text_offset`` counts characters from the choice's start."""
        if self.logprobs is None:
            return None
        offsets = []
        for lp in entries:
            offsets.append(self.offsets[index])
            self.offsets[index] += len(bytes(lp.bytes).decode("utf-8", "ignore"))
        return {
            "tokens": [lp.token for lp in entries],
            "token_logprobs": [lp.logprob for lp in entries],
            "top_logprobs": [{t.token: t.logprob for t in lp.top} for lp in entries],
            "text_offset": offsets,
        }

    def _choice(
        self, index: int, text: str, reason: str | None, lps: list[TokenLogprob] | None = None
    ) -> dict[str, Any]:
        logprobs = None if lps is None else self._logprobs(index, lps)
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    def opening(self) -> list[dict[str, Any]]:
        if not self.echo:
            return []
        return [
            self.chunk([self._choice(i, self.prompts[i // self.n], None)])
            for i in range(len(self.prompts) * self.n)
        ]

    def delta(self, index: int, text: str, logprob: TokenLogprob | None) -> list[dict[str, Any]]:
        held = self.held[index]
        held.add(text, logprob)
        if not held.text:
            return []  # logprobs of held-back bytes go with the text they end up in
        text, lps = held.take()
        return [self.chunk([self._choice(index, text, None, lps)])]

    def finish(self, index: int, reason: str) -> list[dict[str, Any]]:
        text, lps = self.held[index].take()
        return [self.chunk([self._choice(index, text, reason, lps)])]

    def response(
        self,
        texts: list[str],
        reasons: list[str],
        usage: dict[str, int],
        logprobs: list[list[TokenLogprob]],
    ) -> dict[str, Any]:
        choices = []
        for i, (text, reason) in enumerate(zip(texts, reasons, strict=True)):
            shown = self.prompts[i // self.n] + text if self.echo else text
            choices.append(self._choice(i, shown, reason, logprobs[i]))
        return {**self.wrap("text_completion", choices), "usage": usage}
