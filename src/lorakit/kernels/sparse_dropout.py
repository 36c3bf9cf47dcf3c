"""Dropout on the adapter input, computed from the few dropped entries instead of a dense mask.

LoRA's first matmul is linear, so with m a Bernoulli(1-p) keep-mask and S the sparse matrix holding x's
values at the dropped entries:

    dropout(x) @ A^T = (x ⊙ m) @ A^T / (1-p) = (x @ A^T - S @ A^T) / (1-p)

With p = 0.05 only 5% of the entries are dropped. Sampling their positions directly (the gaps between the
successes of a Bernoulli(p) sequence are independent Geometric(p) variables) and correcting the dense product
costs O(n p) instead of a dense (tokens, in) mask and a masked copy of x, and the backward keeps only the
positions (PEFT keeps the mask and the dropped copy of x). It is the same dropout (same distribution, same
formula), not an approximation.
"""

from __future__ import annotations

import math
import warnings

import torch

# Above this rate a dense mask is cheaper than working on the dropped entries.
SPARSE_MAX_P = 0.1
SPARSE_DTYPES = (torch.float32, torch.float64)  # what torch's CPU sparse kernels take


def dropped_positions(n: int, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Sorted flat indices in [0, n) of the entries an i.i.d. Bernoulli(p) mask drops (torch's global RNG)."""
    if p <= 0.0 or n == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    if p >= 1.0:
        return torch.arange(n, device=device)
    log_keep = math.log1p(-p)
    expected = n * p
    chunk = int(expected + 6.0 * math.sqrt(expected) + 64)  # one draw covers [0, n) but once in ~1e9
    parts, start = [], 0
    while True:
        u = torch.rand(chunk, dtype=torch.float64, device=device)  # [0, 1), so 1-u is in (0, 1]
        # floor(log(1-u) / log(1-p)) + 1 is Geometric(p) on {1, 2, ...}: P(gap > k) = (1-p)^k
        pos = u.neg_().log1p_().div_(log_keep).long().add_(1).cumsum_(0).add_(start - 1)
        cut = int(torch.searchsorted(pos, n))
        parts.append(pos[:cut])
        if cut < chunk:
            break
        start = int(pos[-1]) + 1
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class Dropped:
    """The entries of a (tokens, in) input that one dropout draw removes, and the LoRA products that use them."""

    def __init__(self, x2: torch.Tensor, p: float, pos: torch.Tensor | None = None) -> None:
        tokens, width = x2.shape
        self.shape = (tokens, width)
        self.keep_scale = 1.0 / (1.0 - p)
        self.pos = dropped_positions(tokens * width, p, x2.device) if pos is None else pos  # (K,) sorted
        crow = torch.searchsorted(self.pos, torch.arange(tokens + 1, device=x2.device) * width)
        values = x2.reshape(-1).index_select(0, self.pos)
        with warnings.catch_warnings():  # torch flags sparse CSR as beta once per process; the ops used are stable
            warnings.simplefilter("ignore")
            # S: x's values at the dropped entries, (tokens, in) in CSR form
            self.matrix = torch.sparse_csr_tensor(
                crow, self.pos.remainder(width), values, self.shape, check_invariants=False
            )

    def project(self, x2: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """dropout(x) @ A^T, (tokens, r)."""
        h = torch.mm(x2, a.t())
        h.sub_(self.matrix @ a.t())
        return h.mul_(self.keep_scale)

    def grad_a(self, gh: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """gh^T @ dropout(x), (r, in): the gradient of A for the gradient gh of the projection."""
        kept = x2.clone()
        kept.view(-1).index_fill_(0, self.pos, 0.0)
        return torch.mm(gh.t(), kept).mul_(self.keep_scale)

    def add_grad_x(self, dx: torch.Tensor, gh: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """dx += (gh @ A) ⊙ m / (1-p): the dense product, then its values at the dropped entries taken out."""
        dx.addmm_(gh, a, alpha=self.keep_scale)
        return self.remove_dropped(dx, gh, a)

    def remove_dropped(self, dx: torch.Tensor, gh: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """dx -= (gh @ A) / (1-p) at the dropped entries only (dx holds the dense product already)."""
        at_dropped = torch.sparse.sampled_addmm(self.matrix, gh, a, beta=0.0).values()  # (gh @ A)[dropped]
        dx.view(-1).index_add_(0, self.pos, at_dropped, alpha=-self.keep_scale)
        return dx

    def dense_mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The same draw as nn.Dropout's multiplier: 0 where dropped, 1/(1-p) elsewhere (for tests)."""
        mask = torch.full(self.shape, self.keep_scale, dtype=dtype, device=self.pos.device)
        mask.view(-1)[self.pos] = 0.0
        return mask
