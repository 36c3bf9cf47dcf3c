"""PiSSA / OLoRA initial values of A and B from the base weight: pure functions on tensors.

The layers ask the registry (`Variant.decompose`, registered in variants/builtin.py) and never name these inits;
the base then holds W - s*B0@A0, so a file exact on the original W subtracts s*B0@A0 (variants/pissa.py)."""

from __future__ import annotations

import torch

from lorakit.errors import ConfigError


def pissa_init(weight: torch.Tensor, r: int, scaling: float, niter: int | None = None):
    """Principal singular directions of W (out, in): returns (A (r, in), B (out, r), residual W - s*B@A).

    s * B @ A equals the best rank-r approximation of W, so the adapted model starts exactly at W.
    `niter` uses a randomized SVD (fast PiSSA) instead of the full one."""
    w = weight.float()
    _check_rank(w, r, "pissa")
    if niter is None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        u, s, vh = u[:, :r], s[:r], vh[:r]
    else:
        u, s, v = torch.svd_lowrank(w, q=r, niter=niter)
        vh = v.T
    root = (s / scaling).sqrt()  # split the singular values evenly between A and B
    a = root[:, None] * vh  # (r, in)
    b = u * root[None, :]  # (out, r)
    residual = w - scaling * (b @ a)
    return a, b, residual.to(weight.dtype)


def olora_init(weight: torch.Tensor, r: int, scaling: float):
    """Orthonormal LoRA: W = QR; B = first r columns of Q, A = first r rows of R (as PEFT does)."""
    w = weight.float()
    _check_rank(w, r, "olora")
    q, rr = torch.linalg.qr(w)
    b = q[:, :r].contiguous()
    a = rr[:r].contiguous()
    residual = w - scaling * (b @ a)
    return a, b, residual.to(weight.dtype)


def _check_rank(w: torch.Tensor, r: int, method: str) -> None:
    if r > min(w.shape):
        raise ConfigError(f"init_lora_weights={method!r} needs r <= min(weight shape) = {min(w.shape)}, got r={r}")


def parse_pissa(init: bool | str) -> tuple[bool, int | None]:
    """'pissa' -> (True, None); 'pissa_niter_4' -> (True, 4); anything else -> (False, None)."""
    if isinstance(init, str) and init.startswith("pissa"):
        return True, (int(init.rsplit("_", 1)[1]) if init != "pissa" else None)
    return False, None


def rewrites_base(init: bool | str) -> bool:
    """True for the inits that move the base weight to a residual (PiSSA in every form, OLoRA)."""
    return parse_pissa(init)[0] or init == "olora"


def decompose(weight: torch.Tensor, r: int, scaling: float, init: str):
    """(A, B, residual) for init "olora", "pissa" or "pissa_niter_<k>" (Variant.decompose)."""
    if init == "olora":
        return olora_init(weight, r, scaling)
    return pissa_init(weight, r, scaling, parse_pissa(init)[1])
