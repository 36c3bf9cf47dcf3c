"""DoRA's output as autograd nodes that keep one activation and few passes over memory (used by variants/dora.py).

Both write into a fresh tensor they own (the base output, or the pre-scale sum) and save the result `out`
instead of the pre-scale sum: with out = f ⊙ (pre − b) + b,

    ∂L/∂pre = g ⊙ f        ∂L/∂f = Σ_tokens g ⊙ (out − b) / f        ∂L/∂b = Σ_tokens g ⊙ (1 − f)

(f = m / ||W + s·B·A||, one value per output row; f = 0 only for a dead row, whose gradient is then 0).
"""

from __future__ import annotations

import torch


def _grad_factor(grad: torch.Tensor, out: torch.Tensor, factor: torch.Tensor, bias: torch.Tensor | None):
    dot = (grad * out).sum_to_size(factor.shape)
    if bias is not None:
        dot = dot - bias * grad.sum_to_size(factor.shape)
    nonzero = factor != 0
    return torch.where(nonzero, dot / torch.where(nonzero, factor, 1), 0)


class ScaleRows(torch.autograd.Function):
    """out = factor ⊙ (pre − bias) + bias, in place on `pre` (a fresh tensor); factor / bias broadcast to pre."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, factor: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = pre.mul_(factor) if bias is None else pre.mul_(factor).add_(bias * (1 - factor))
        ctx.mark_dirty(pre)
        ctx.save_for_backward(out, factor, bias)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, factor, bias = ctx.saved_tensors
        grad_pre = grad * factor
        grad_factor = _grad_factor(grad, out, factor, bias) if ctx.needs_input_grad[1] else None
        grad_bias = None
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = (grad.sum_to_size(bias.shape) - grad_pre.sum_to_size(bias.shape))
        return grad_pre, grad_factor, grad_bias


def scale_rows(pre: torch.Tensor, factor: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """factor ⊙ (pre − bias) + bias, in place on `pre` (which the caller must own)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (pre, factor, bias)):
        return ScaleRows.apply(pre, factor, bias)
    out = pre.mul_(factor)
    return out if bias is None else out.add_(bias * (1 - factor))


class DoraLinearUpdate(torch.autograd.Function):
    """out = f ⊙ (y − b + s·(x Aᵀ) Bᵀ) + b, written into y (the base output W·x + b, which the caller owns).

    Saves x, h = x Aᵀ (tokens, r), A, B, f and out. Backward folds f into the small matrices, so only the
    base path's gradient g ⊙ f and the Σ g ⊙ out reduction touch (tokens, out) memory:
        dB = s·(hᵀ g)ᵀ ⊙ f      gh = s·g (B ⊙ f)      dA = ghᵀ x      dx (adapter part) = gh A"""

    @staticmethod
    def forward(ctx, y, x, lora_a, lora_b, factor, bias, scale: float):
        x2 = x.reshape(-1, x.shape[-1])  # (tokens, in)
        out = y.view(-1, y.shape[-1])  # (tokens, out)
        h = torch.mm(x2, lora_a.t())  # (tokens, r)
        out.addmm_(h, lora_b.t(), alpha=scale).mul_(factor)
        if bias is not None:
            out.add_(bias * (1 - factor))
        ctx.mark_dirty(y)
        ctx.save_for_backward(x2, h, lora_a, lora_b, factor, bias, y)  # y, not its view: it is the output
        ctx.scale, ctx.x_shape = scale, x.shape
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x2, h, lora_a, lora_b, factor, bias, y = ctx.saved_tensors
        out = y.reshape(-1, y.shape[-1])
        need_y, need_x, need_a, need_b, need_f, need_bias = ctx.needs_input_grad[:6]
        g = grad_y.reshape(-1, grad_y.shape[-1])  # (tokens, out)
        grad_y2 = g * factor if need_y or need_bias else None
        grad_x = grad_a = grad_b = grad_f = grad_bias = None
        if need_b:
            grad_b = torch.mm(h.t(), g).t().mul_(factor[:, None] * ctx.scale)  # (out, r)
        if need_x or need_a:
            gh = torch.mm(g, lora_b * (factor[:, None] * ctx.scale))  # (tokens, r)
            if need_a:
                grad_a = torch.mm(gh.t(), x2)
            if need_x:
                grad_x = torch.mm(gh, lora_a).view(ctx.x_shape)
        if need_f:
            grad_f = _grad_factor(g, out, factor, bias)
        if need_bias:
            grad_bias = g.sum(0) - grad_y2.sum(0)
        grad_y = grad_y2.view(grad_y.shape) if need_y else None
        return grad_y, grad_x, grad_a, grad_b, grad_f, grad_bias, None
