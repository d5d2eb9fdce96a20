"""Log-probabilities of answers: the output head only at answer tokens, one prompt for two answers.

Preference losses need, for each answer, the sum of the log-probabilities of its tokens given the
prompt. Two things keep that cheap:

- The head (262k rows for gemma3) runs only on the hidden states that predict an answer token, a
  chunk of rows at a time, as in loss.py; no logits outlive their chunk, and the gradient with
  respect to each hidden state is made in the forward pass (it is the same for every use of a
  token's log-probability; the backward pass only scales it).
- A pair is one sequence ``[prompt | first answer | second answer]``: the second answer's
  position ids restart where the first one's did, and the attention mask lets each answer see
  the prompt and itself, never the other answer. The prompt is encoded once for both; the last
  prompt token's hidden state predicts the first token of each answer. Several such units may
  share a row (packing): attention never crosses units. The mask is built here, for the full and
  the sliding-window layers, from the tokens' unit, branch and position; a test compares the
  log-probabilities with those of each answer encoded alone.
"""

from __future__ import annotations

import torch

from cuvee.errors import ConfigError
from cuvee.train.kernels import ATTENTION as COMPILED_EAGER
from cuvee.train.loss import Workspace, _chunk_rows, _softmax_
from cuvee.train.surgery import causal_lm, embedding_dtype, head_weights

PROMPT, FIRST, SECOND = 0, 1, 2  # a token's branch: shared prompt, first or second answer
_TINY = torch.finfo(torch.float32).tiny


class _TokenLogProbs(torch.autograd.Function):
    """log p(target) of each row of ``hidden`` through the (softcapped) head."""

    @staticmethod
    def forward(ctx, hidden, weight, row_values, targets, row_index, softcap, compute_dtype, ws):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_r = row_values is not None and ctx.needs_input_grad[2]
        rows = _chunk_rows(weight.shape[0])
        w = weight.to(compute_dtype)
        rv = correction = None
        if row_values is not None:
            rv = row_values.to(compute_dtype)
            if need_h:
                correction = rv - w[row_index]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        # d log p(target) / d hidden, per row: the backward pass scales it by its row's gradient
        grad_h = torch.empty_like(hidden) if need_h else None
        # the same with respect to the replaced head rows: (rows, K), K the replaced rows
        slice_r = None
        if need_r:
            slice_r = torch.empty(
                hidden.shape[0], row_index.numel(), dtype=torch.float32, device=hidden.device
            )
        for start in range(0, hidden.shape[0], rows):
            h = hidden[start : start + rows].to(compute_dtype)
            tgt = targets[start : start + rows]
            n = h.shape[0]
            probs, squash = _probabilities(h, w, rv, row_index, softcap, compute_dtype, ws)
            picked = probs.gather(1, tgt[:, None]).squeeze(1).float()
            out[start : start + n] = torch.log(picked.clamp_min(_TINY))
            if not (need_h or need_r):
                continue
            # d log p(target) / d logits = one_hot(target) - p; kept here as p - one_hot
            probs[torch.arange(n, device=probs.device), tgt] -= 1
            grad = probs
            if squash is not None:
                grad = probs.float().mul_(1 - squash * squash).to(compute_dtype)
            if need_h:
                gh = grad @ w
                if correction is not None:
                    gh += grad[:, row_index] @ correction
                grad_h[start : start + n] = -gh
            if need_r:
                slice_r[start : start + n] = -grad[:, row_index].float()
        ctx.save_for_backward(grad_h, slice_r, hidden if need_w or need_r else None)
        ctx.need_w = need_w
        ctx.head = (weight, rv, row_index, targets, softcap, compute_dtype, ws) if need_w else None
        ctx.row_dtype = row_values.dtype if row_values is not None else None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, slice_r, hidden = ctx.saved_tensors
        g = grad_out.float()
        dh = dw = dr = None
        if grad_h is not None:
            dh = grad_h * g[:, None].to(grad_h.dtype)
        if slice_r is not None:
            dr = ((slice_r * g[:, None]).t() @ hidden.float()).to(ctx.row_dtype)
        if ctx.need_w:
            dw = _head_weight_grad(hidden, g, *ctx.head)
        return dh, dw, dr, None, None, None, None, None


def _probabilities(h, w, rv, row_index, softcap, compute_dtype, ws):
    """Softmax of one chunk's (softcapped) logits, in the reused buffer; and the tanh of the
    softcap (None without one), which the gradient needs."""
    logits = ws.logits(h.shape[0], w.shape[0], compute_dtype, h.device)
    torch.mm(h, w.t(), out=logits)
    if rv is not None:
        logits[:, row_index] = h @ rv.t()
    squash = None
    if softcap:
        squash = torch.tanh(logits.float() / softcap)
        logits.copy_(squash * softcap)
    return _softmax_(logits), squash


def _head_weight_grad(hidden, g, weight, rv, row_index, targets, softcap, compute_dtype, ws):
    """The head's gradient (a full fine-tune trains it): the chunks are computed again rather
    than keeping a vocabulary-sized gradient per answer from the forward pass."""
    w = weight.to(compute_dtype)
    dw = torch.zeros_like(weight, dtype=torch.float32)
    rows = _chunk_rows(weight.shape[0])
    for start in range(0, hidden.shape[0], rows):
        h = hidden[start : start + rows].to(compute_dtype)
        tgt = targets[start : start + rows]
        n = h.shape[0]
        probs, squash = _probabilities(h, w, rv, row_index, softcap, compute_dtype, ws)
        probs[torch.arange(n, device=probs.device), tgt] -= 1
        scale = -g[start : start + n, None]
        grad = probs.float().mul_(scale)
        if squash is not None:
            grad.mul_(1 - squash * squash)
        dw += grad.t() @ h.float()
    if row_index is not None and rv is not None:
        dw[row_index] = 0  # those rows are replaced, not used
    return dw.to(weight.dtype)


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    compute_dtype: torch.dtype | None = None,
    row_index: torch.Tensor | None = None,
    row_values: torch.Tensor | None = None,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """log p(targets[i]) under ``softcap(hidden[i] @ weight.T)``, fp32, shape (N,).

    ``hidden`` (N, H) holds only the rows that predict an answer token; ``row_values`` replace
    the head's rows ``row_index`` as in loss.linear_cross_entropy."""
    if hidden.shape[0] == 0:
        zero = hidden.sum() * 0.0 + weight.sum() * 0.0
        if row_values is not None:
            zero = zero + row_values.sum() * 0.0
        return zero.float().expand(0)
    dtype = compute_dtype or hidden.dtype
    return _TokenLogProbs.apply(
        hidden, weight, row_values, targets, row_index, softcap, dtype, workspace or Workspace()
    )


def attention_masks(
    config, unit: torch.Tensor, branch: torch.Tensor, position: torch.Tensor, dtype: torch.dtype
):
    """The masks of rows that hold ``[prompt | answer | answer]`` units, as the model's layers
    take them: a dict by layer type where the model has several (Gemma 3's sliding-window and
    full layers), else one tensor. ``unit``, ``branch`` and ``position`` are (B, L); padding has
    a negative unit. A query sees a key of the same unit, of the prompt or its own answer, at a
    position not after its own (and within the sliding window, for those layers)."""
    q_pos, k_pos = position[:, :, None], position[:, None, :]
    allowed = (unit[:, :, None] == unit[:, None, :]) & (unit[:, :, None] >= 0)
    allowed &= (branch[:, None, :] == PROMPT) | (branch[:, None, :] == branch[:, :, None])
    allowed &= k_pos <= q_pos
    # padding sees itself: a row of nothing but masked keys is NaN in some kernels
    allowed |= torch.eye(unit.shape[1], dtype=torch.bool, device=unit.device)[None]
    impl = config._attn_implementation
    if impl not in ("eager", "sdpa", COMPILED_EAGER):
        raise ConfigError(
            f"preference tuning builds its own attention mask; {impl!r} attention cannot take it",
            hint="use the eager or sdpa attention",
        )

    def shaped(mask: torch.Tensor) -> torch.Tensor:
        mask = mask[:, None]  # (B, 1, L, L): every head alike
        if impl == "sdpa":
            return mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            ~mask, torch.finfo(dtype).min
        )

    types = set(getattr(config, "layer_types", None) or ())
    if not types:
        return shaped(allowed)
    out = {}
    for kind in types:
        if kind == "sliding_attention":
            out[kind] = shaped(allowed & (q_pos - k_pos < config.sliding_window))
        else:
            out[kind] = shaped(allowed)
    return out


class AnswerLogProbs(torch.nn.Module):
    """The summed log-probability and the token count of each answer of a batch of units.

    The forward takes the batch ``answer_batch`` (pairs.py) makes: token ids, positions, units and
    branches (B, L); ``source`` the flat index of the hidden state predicting each answer token,
    ``targets`` that token, ``slot`` the answer it belongs to; ``slots`` the number of answers."""

    def __init__(self, model: torch.nn.Module, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.compute_dtype = compute_dtype
        lm = causal_lm(model)
        self.softcap = getattr(lm.config, "final_logit_softcapping", None)
        self.workspace = Workspace()

    def answer_logprobs(
        self, input_ids, position_ids, unit, branch, source, targets, slot, slots: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lm = causal_lm(self.model)
        embed_dtype = embedding_dtype(lm)
        masks = attention_masks(lm.config, unit, branch, position_ids, embed_dtype)
        out = lm.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, attention_mask=masks, use_cache=False
        )
        hidden = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])[source]
        weight, row_index, row_values = head_weights(lm.get_output_embeddings())
        per_token = token_logprobs(
            hidden,
            weight,
            targets,
            softcap=self.softcap,
            compute_dtype=self.compute_dtype,
            row_index=row_index,
            row_values=row_values,
            workspace=self.workspace,
        )
        sums = torch.zeros(slots, dtype=torch.float32, device=per_token.device)
        sums = sums.index_add(0, slot, per_token)
        counts = torch.zeros(slots, dtype=torch.float32, device=per_token.device)
        counts = counts.index_add(0, slot, torch.ones_like(per_token))
        return sums, counts
