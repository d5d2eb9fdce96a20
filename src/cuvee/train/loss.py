"""Cross-entropy through the output head, only where something is learned, a chunk at a time.

With a 262k-token vocabulary the output head is most of a small model's compute and its logits
most of the memory: 8 x 256 positions of fp32 logits are 2 GB before their gradient. So the head
runs only on the hidden states of supervised positions, a chunk of rows at a time, and each
chunk's gradient is computed right away in the forward pass; no logits outlive their chunk.

The chunk's logits live in one buffer that is reused for every chunk and every call: the
softmax and the gradient with respect to the logits are made in place in it. A fresh 134 MB
block per chunk costs the CPU a page fault per 4 KB every time (measured here: the head's
matrix product 15% slower and the softmax 2.5x slower into new memory than into reused)."""

from __future__ import annotations

import torch


def _chunk_rows(vocab: int) -> int:
    # About 256 MB of fp32 probabilities per chunk: large enough that the head's weight, read
    # once per chunk, is amortised over many rows.
    return max(16, (1 << 26) // max(vocab, 1))


# The smallest probability a target may be given: caps one token's loss at about 87.
_TINY = torch.finfo(torch.float32).tiny


class Workspace:
    """One reusable logits buffer per (dtype, device), grown when a larger one is asked for.
    Owned by the caller (one per loss module), so nothing is shared between models."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def logits(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device):
        key = (dtype, device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < rows * vocab:
            self._buffers.pop(key, None)
            buf = self._buffers[key] = torch.empty(rows * vocab, dtype=dtype, device=device)
        return buf[: rows * vocab].view(rows, vocab)


def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension (accumulated in fp32), written over its input on a CPU,
    where torch's kernel finishes reading a row before writing it (tested); elsewhere into new
    memory, as no such guarantee was checked there."""
    if x.device.type != "cpu":
        return torch.softmax(x, -1)
    return torch.ops.aten._softmax.out(x, -1, False, out=x)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, row_values, targets, row_index, softcap, compute_dtype, ws):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_r = row_values is not None and ctx.needs_input_grad[2]
        rows = _chunk_rows(weight.shape[0])
        w = weight.to(compute_dtype)
        rv = correction = None
        if row_values is not None:
            # The replaced rows are patched into each chunk's logits and gradient, instead of
            # into a copy of the whole head.
            rv = row_values.to(compute_dtype)
            if need_h:
                correction = rv - w[row_index]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_r = torch.zeros_like(row_values, dtype=torch.float32) if need_r else None
        for start in range(0, hidden.shape[0], rows):
            h = hidden[start : start + rows].to(compute_dtype)
            tgt = targets[start : start + rows]
            n = h.shape[0]
            logits = ws.logits(n, w.shape[0], compute_dtype, hidden.device)
            torch.mm(h, w.t(), out=logits)
            if rv is not None:
                logits[:, row_index] = h @ rv.t()
            squash = None
            if softcap:
                squash = torch.tanh(logits.float() / softcap)
                logits.copy_(squash * softcap)
            # The probabilities (accumulated in fp32, stored in the compute dtype); the loss is
            # -log p(target) and the gradient with respect to the logits p - one_hot(target).
            probs = _softmax_(logits)
            picked = probs.gather(1, tgt[:, None]).squeeze(1).float()
            total += -torch.log(picked.clamp_min(_TINY)).sum()
            if not (need_h or need_w or need_r):
                continue
            probs[torch.arange(n, device=probs.device), tgt] -= 1
            grad = probs
            if squash is not None:
                grad = probs.float().mul_(1 - squash * squash).to(compute_dtype)
                del squash
            if need_h:
                gh = grad @ w
                if correction is not None:
                    gh += grad[:, row_index] @ correction
                grad_h[start : start + n] = gh
            if need_w:
                grad_w += (grad.t() @ h).float()
            if need_r:
                grad_r += (grad[:, row_index].t() @ h).float()
        if grad_w is not None and row_values is not None:
            grad_w[row_index] = 0  # those rows are replaced, not used
        ctx.save_for_backward(grad_h, grad_w, grad_r)
        ctx.weight_dtype = weight.dtype
        ctx.row_dtype = row_values.dtype if row_values is not None else None
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_r = ctx.saved_tensors
        dh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        dr = (grad_r * grad_out).to(ctx.row_dtype) if grad_r is not None else None
        return dh, dw, dr, None, None, None, None, None


def linear_cross_entropy(
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
    """The summed cross-entropy of ``softcap(hidden @ weight.T)`` against ``targets``.

    ``hidden`` is (N, H) for the supervised positions only, ``weight`` the (V, H) output head.
    ``row_values`` (K, H), if given, replace the head's rows ``row_index`` (trainable token
    embeddings over a frozen head); their gradient costs K rows, not the whole vocabulary.
    ``workspace`` keeps the logits buffer between calls (a fresh one per call without it).
    Returns a scalar sum (divide by the number of supervised tokens of the whole step)."""
    if hidden.shape[0] == 0:
        zero = hidden.sum() * 0.0 + weight.sum() * 0.0
        return zero + row_values.sum() * 0.0 if row_values is not None else zero
    dtype = compute_dtype or hidden.dtype
    return _LinearCrossEntropy.apply(
        hidden, weight, row_values, targets, row_index, softcap, dtype, workspace or Workspace()
    )
