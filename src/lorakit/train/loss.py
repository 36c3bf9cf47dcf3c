"""The training loss: the summed cross-entropy of F.cross_entropy(reduction="sum"), computed in row chunks.

Why not F.cross_entropy: over (tokens, vocab) logits it writes three (tokens, vocab) buffers (log-softmax, the
NLL's gradient, the log-softmax's gradient), each a fresh allocation far past glibc's mmap threshold whose
page faults alone cost ~13 ms per 32 MiB on the CPUs we measured, and it runs exp() over every logit twice
(forward and backward). Here the forward computes each chunk's softmax once, while the chunk is in cache,
and keeps it (chunks small enough to come from the allocator's reused heap); the backward is then one
multiply, minus one at each row's target:

    loss = sum over kept rows i of  logsumexp(z_i) - z_i[t_i]
    dloss/dz_i = g * (softmax(z_i) - onehot(t_i))     (0 for rows whose target is ignore_index)

tests/train/test_loss.py checks the value and the gradient against F.cross_entropy.
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 19  # fp32 elements per chunk (2 MiB): well under glibc's mmap threshold, near L2 size


class _CrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
        rows = max(1, CHUNK_ELEMENTS // logits.shape[1])
        keep = targets != ignore_index
        every_row_kept = bool(keep.all())
        safe = torch.where(keep, targets, 0).unsqueeze(1)  # (tokens, 1); ignored rows point at class 0
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        probs = []  # fp32 softmax of each chunk, for the backward
        for start in range(0, logits.shape[0], rows):
            z, kept = logits[start:start + rows], keep[start:start + rows]
            peak = z.amax(dim=1, keepdim=True).float()
            p = torch.sub(z, peak) if z.dtype == torch.float32 else z.float().sub_(peak)
            p.exp_()
            norm = p.sum(dim=1, keepdim=True)
            lse = norm.log().add_(peak).squeeze(1)
            picked = z.gather(1, safe[start:start + rows]).squeeze(1).float()
            total += torch.where(kept, lse - picked, 0.0).sum()
            p.div_(norm)
            if not every_row_kept:
                p.masked_fill_(~kept.unsqueeze(1), 0.0)  # ignored rows get no gradient, even if their logits are odd
            probs.append(p)
        ctx.save_for_backward(safe, keep)
        ctx.probs, ctx.rows, ctx.shape, ctx.dtype = probs, rows, logits.shape, logits.dtype
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        safe, keep = ctx.saved_tensors
        out = torch.empty(ctx.shape, dtype=ctx.dtype, device=grad.device)
        minus = torch.where(keep, -grad, 0.0).to(torch.float32).unsqueeze(1)  # (tokens, 1)
        for index, p in enumerate(ctx.probs):  # never written to: a retained graph can run the backward again
            start = index * ctx.rows
            stop = start + p.shape[0]
            if ctx.dtype == torch.float32:
                chunk = torch.mul(p, grad, out=out[start:stop])
                chunk.scatter_add_(1, safe[start:stop], minus[start:stop])
            else:  # subtract in fp32, round once into the logits' dtype
                chunk = torch.mul(p, grad).scatter_add_(1, safe[start:stop], minus[start:stop])
                out[start:stop].copy_(chunk)
        return out, None, None


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="sum"), as an fp32 scalar,
    for (tokens, classes) logits of any float dtype; faster and with fewer large temporaries (module doc)."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy_sum takes (tokens, classes) logits and (tokens,) targets, "
                         f"got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if not logits.requires_grad:  # evaluation: nothing to keep for a backward
        return torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=ignore_index,
                                                 reduction="sum")
    with torch.autocast(logits.device.type, enabled=False):  # the softmax stays in fp32 under autocast
        return _CrossEntropySum.apply(logits, targets, ignore_index)
