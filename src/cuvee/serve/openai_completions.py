"""OpenAI's legacy text completions (``POST /v1/completions``) <-> engine requests and events.

The prompt (a string or a list of strings) is sent as is, without the chat template. Sampling
parameters map as for chat (see ``openai_chat``); ``echo`` puts the prompt before the text;
``max_tokens`` defaults to 16 as OpenAI's does. Prompts given as token ids, ``suffix``,
``best_of`` above 1 and ``logprobs`` are refused by name. Choice ``i * n + j`` is the j-th
completion of the i-th prompt, as OpenAI numbers them."""

from __future__ import annotations

from typing import Any

from cuvee.engine.base import Request
from cuvee.serve import errors
from cuvee.serve.generation import Envelope, Plan
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
    if body.logprobs:
        raise errors.unsupported("logprobs", "log probabilities are not returned yet")
    prompts = prompts_of(body)
    if len(prompts) * body.n > MAX_N:
        raise errors.invalid_param(
            f"{len(prompts)} prompts x n={body.n} asks for more than {MAX_N} completions at once.",
            "n",
        )
    requests, prompt_of = [], []
    for i, text in enumerate(prompts):
        for j in range(body.n):
            requests.append(Request(prompt=text, params=sampling_params(body, j)))
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

    def __init__(
        self, model: str, prompts: list[str], n: int, echo: bool, include_usage: bool
    ) -> None:
        super().__init__("cmpl", model, include_usage)
        self.prompts = prompts
        self.n = n
        self.echo = echo

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return self.chunk("text_completion", choices)

    def _choice(self, index: int, text: str, reason: str | None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}

    def opening(self) -> list[dict[str, Any]]:
        if not self.echo:
            return []
        return [
            self._chunk([self._choice(i, self.prompts[i // self.n], None)])
            for i in range(len(self.prompts) * self.n)
        ]

    def delta(self, index: int, text: str) -> dict[str, Any]:
        return self._chunk([self._choice(index, text, None)])

    def finish(self, index: int, reason: str) -> dict[str, Any]:
        return self._chunk([self._choice(index, "", reason)])

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        chunk = self._chunk([])
        chunk["usage"] = usage
        return chunk

    def response(
        self, texts: list[str], reasons: list[str], usage: dict[str, int]
    ) -> dict[str, Any]:
        choices = []
        for i, (text, reason) in enumerate(zip(texts, reasons, strict=True)):
            shown = self.prompts[i // self.n] + text if self.echo else text
            choices.append(self._choice(i, shown, reason))
        return {**self.wrap("text_completion", choices), "usage": usage}
