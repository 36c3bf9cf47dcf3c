"""The LoRA linear as one autograd node over a frozen nn.Linear base: y = x W^T + b + s (drop(x) A^T) B^T.

Plain autograd records four nodes per layer (base matmul, A, B, the add) and its backward allocates a
second (tokens, in) input gradient for the adapter path and adds it to the base's. This node saves only
what its backward reads (x, the (tokens, r) projection h, the weights; with dropout the dropped positions,
never a masked copy of x), and accumulates the adapter's input gradient into the base's:

    gh = s g B              (tokens, r)      grad of h
    dB = s g^T h = (s h^T g)^T               (the transposed product runs faster on CPU BLAS)
    dA = gh^T drop(x)
    dx = g W + drop'(gh A)  (one buffer; drop' puts the dropout's zeros and 1/(1-p) scale back)

With `merged` (many tokens: see kernels/linear.merge_on_the_fly) the temporary W + s B A replaces low-rank
products: y = x (W + s B A)^T + b when there is no dropout, and in the backward, where gh A = s g B A,
dx = g (W + s/(1-p) B A) minus that product's values at the dropped entries (none without dropout).
The temporary is rebuilt in the backward rather than kept: it is as large as W.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lorakit.kernels.sparse_dropout import Dropped
from lorakit.layers.lowrank import scaled_product


class FrozenLinearLora(torch.autograd.Function):
    """Inputs: x (..., in), the base's weight (out, in) and bias (frozen), A (r, in), B (out, r), the scale
    s, the dropout rate p (0, or a rate served by sparse_dropout.Dropped) and whether to merge per call."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float, p: float, merged: bool):
        x2 = x.reshape(-1, x.shape[-1])  # (tokens, in)
        dropped = Dropped(x2, p) if p > 0.0 else None
        h = dropped.project(x2, lora_a) if dropped is not None else torch.mm(x2, lora_a.t())  # (tokens, r)
        if merged and dropped is None:
            y = F.linear(x2, scaled_product(lora_a, lora_b, scale, base=weight), bias)  # (tokens, out)
        else:
            y = F.linear(x2, weight, bias)
            y.addmm_(h, lora_b.t(), alpha=scale)
        ctx.save_for_backward(x2, h, weight, lora_a, lora_b)
        ctx.scale, ctx.dropped, ctx.merged, ctx.x_shape = scale, dropped, merged, x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):
        x2, h, weight, lora_a, lora_b = ctx.saved_tensors
        need_x, _, _, need_a, need_b = ctx.needs_input_grad[:5]
        g = grad_y.reshape(-1, grad_y.shape[-1])  # (tokens, out)
        dropped: Dropped | None = ctx.dropped
        grad_x = grad_a = grad_b = None
        if need_b:
            grad_b = torch.mm(h.t(), g).mul_(ctx.scale).t()  # (out, r)
        gh = None  # (tokens, r)
        if need_a or (need_x and (dropped is not None or not ctx.merged)):
            gh = torch.mm(g, lora_b).mul_(ctx.scale)
        if need_a:
            grad_a = dropped.grad_a(gh, x2) if dropped is not None else torch.mm(gh.t(), x2)
        if need_x:
            if ctx.merged:
                keep = dropped.keep_scale if dropped is not None else 1.0
                grad_x = torch.mm(g, scaled_product(lora_a, lora_b, ctx.scale * keep, base=weight))  # (tokens, in)
                if dropped is not None:
                    dropped.remove_dropped(grad_x, gh, lora_a)
            else:
                grad_x = torch.mm(g, weight)
                if dropped is not None:
                    dropped.add_grad_x(grad_x, gh, lora_a)
                else:
                    grad_x.addmm_(gh, lora_a)
            grad_x = grad_x.view(ctx.x_shape)
        return grad_x, None, None, grad_a, grad_b, None, None, None
