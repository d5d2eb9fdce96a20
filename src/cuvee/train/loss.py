"""Cross-entropy through the output head, only where something is learned, a chunk at a time.

With a 262k-token vocabulary the output head is most of a small model's compute and its logits
most of the memory: 8 x 256 positions of fp32 logits are 2 GB before their gradient. So the head
runs only on the hidden states of supervised positions, a chunk of rows at a time, and each
chunk's gradient is computed right away in the forward pass; no logits outlive their chunk."""

from __future__ import annotations

import torch


def _chunk_rows(vocab: int) -> int:
    # About 64 MB of fp32 logits per chunk.
    return max(16, (1 << 24) // max(vocab, 1))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, compute_dtype):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        rows = _chunk_rows(weight.shape[0])
        w = weight.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        for start in range(0, hidden.shape[0], rows):
            h = hidden[start : start + rows].to(compute_dtype)
            tgt = targets[start : start + rows]
            logits = (h @ w.t()).float()
            squash = None
            if softcap:
                squash = torch.tanh(logits / softcap)
                logits = squash * softcap
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, tgt[:, None]).squeeze(1)
            total += (lse - picked).sum()
            if need_h or need_w:
                # d loss / d logits = softmax - one_hot, computed in place over the logits.
                grad = logits.sub_(lse[:, None]).exp_()
                grad[torch.arange(tgt.shape[0], device=grad.device), tgt] -= 1
                if squash is not None:
                    grad.mul_(1 - squash * squash)
                grad = grad.to(compute_dtype)
                if need_h:
                    grad_h[start : start + rows] = (grad @ w).to(hidden.dtype)
                if need_w:
                    grad_w += (grad.t() @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        dh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The summed cross-entropy of ``softcap(hidden @ weight.T)`` against ``targets``.

    ``hidden`` is (N, H) for the supervised positions only, ``weight`` the (V, H) output head.
    Returns a scalar sum (divide by the number of supervised tokens of the whole step)."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0
    dtype = compute_dtype or hidden.dtype
    return _LinearCrossEntropy.apply(hidden, weight, targets, softcap, dtype)
