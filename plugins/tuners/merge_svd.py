"""SVD-based merges of K expert deltas for one layer: KnOTS and TSV-M.

No maintained library ships these (peft has no SVD-alignment merge; the authors' repositories are research
scripts bound to their configs), so they are written here on ``torch.linalg.svd``. The coefficient merge inside
KnOTS reuses the element-wise merges of ``merge_basic`` (peft's arithmetic).

Both take ``deltas[k]``: the (d_out, d_in) task delta of expert k in one layer (``s * B_k @ A_k`` for LoRA), dense
or as a :class:`LowRankDelta` (factors, much faster), and work in float64, returning the input dtype. Singular
components below ``rtol * s_max`` are dropped: they carry no signal and their singular vectors are arbitrary,
which would otherwise leak into the shared basis (KnOTS) or the orthogonalisation (TSV-M); the default ``rtol`` is
numpy's ``matrix_rank`` rule.
"""
from __future__ import annotations

from typing import Callable, Literal, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from .merge_basic import TRIMMING_MERGES, check_deltas, dare, lora_average, magnitude_prune, task_arithmetic, ties

__all__ = ["LowRankDelta", "thin_svd", "factored_svd", "knots_factors", "knots", "tsv_merge_factors", "tsv_merge"]

KnotsCombination = Literal["task_arithmetic", "ties", "dare", "magnitude_prune", "lora_average"]
KnotsKeep = Literal["authors", "peft"]
_COEFFICIENT_MERGES: dict[str, Callable[..., Tensor]] = {
    "task_arithmetic": task_arithmetic,
    "ties": ties,
    "dare": dare,
    "magnitude_prune": magnitude_prune,
    "lora_average": lora_average,
}


class LowRankDelta(NamedTuple):
    """A delta kept as factors, ``B @ A`` (LoRA: B = s * lora_B (d_out, r), A = lora_A (r, d_in)).

    The SVD merges take these instead of dense deltas to factorise through QR of the thin factors: exact, and
    O((d_out + d_in) r^2) instead of a dense SVD (KnOTS on ViT-B, K=3: minutes -> seconds on one CPU core).
    """

    B: Tensor
    A: Tensor

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.B.shape[0], self.A.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.B.dtype

    @property
    def device(self) -> torch.device:
        return self.B.device

    def dense(self) -> Tensor:
        return self.B @ self.A


Delta = Union[Tensor, LowRankDelta]


def _check_2d(deltas: Sequence[Delta]) -> tuple[int, int]:
    shape = check_deltas(deltas)
    if len(shape) != 2:
        raise ValueError(f"SVD merges need (d_out, d_in) matrices, got deltas of shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def thin_svd(mat: Tensor, *, rtol: Optional[float] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Float64 SVD truncated to the numerical rank.

    Args:
        mat: (m, n).
        rtol: keep singular values > ``rtol * s_max``; default ``max(m, n) * eps(mat.dtype)``.
    Returns:
        U (m, R), s (R,), Vh (R, n), all float64, R = numerical rank (0 for a zero matrix).
    """
    if rtol is None:
        rtol = max(mat.shape) * torch.finfo(mat.dtype if mat.is_floating_point() else torch.float32).eps
    U, s, Vh = torch.linalg.svd(mat.to(torch.float64), full_matrices=False)
    return _truncate(U, s, Vh, rtol)


def _truncate(U: Tensor, s: Tensor, Vh: Tensor, rtol: float) -> tuple[Tensor, Tensor, Tensor]:
    keep = s > rtol * s[0] if s.numel() > 0 and s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)
    return U[:, keep], s[keep], Vh[keep]


def factored_svd(B: Tensor, A: Tensor, *, rtol: Optional[float] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Float64 SVD of ``B @ A`` (B (m, r), A (r, n)) from QR of the factors; same output as ``thin_svd(B @ A)``."""
    if B.dim() != 2 or A.dim() != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"low-rank factors must be B (m, r) and A (r, n); got B {tuple(B.shape)}, A {tuple(A.shape)}")
    if rtol is None:
        rtol = max(B.shape[0], A.shape[1]) * torch.finfo(B.dtype).eps
    Qb, Rb = torch.linalg.qr(B.to(torch.float64))  # (m, r), (r, r)
    Qa, Ra = torch.linalg.qr(A.to(torch.float64).T)  # (n, r), (r, r)
    # reduced SVD: Rb @ Ra.T is (min(m, r), min(n, r)), not square once the stacked rank r exceeds a layer dimension
    Uc, s, Vch = torch.linalg.svd(Rb @ Ra.T, full_matrices=False)
    return _truncate(Qb @ Uc, s, Vch @ Qa.T, rtol)


def _svd(delta: Delta, rtol: Optional[float]) -> tuple[Tensor, Tensor, Tensor]:
    return factored_svd(delta.B, delta.A, rtol=rtol) if isinstance(delta, LowRankDelta) else thin_svd(delta, rtol=rtol)


def knots_factors(
    deltas: Sequence[Delta],
    *,
    combination: KnotsCombination = "task_arithmetic",
    rtol: Optional[float] = None,
    keep: KnotsKeep = "authors",
    **combination_kwargs,
) -> tuple[Tensor, Tensor]:
    """KnOTS (Stoica et al., ICLR 2025): align the K deltas in one shared SVD basis, merge there.

    ``[delta_1, ..., delta_K] = U diag(s) [V_1^T, ..., V_K^T]`` (concatenated along d_in), so that
    ``delta_k = U C_k`` with per-task coefficients ``C_k = diag(s) V_k^T`` (R, d_in). The C_k are merged with an
    element-wise method (``combination``: ``"ties"`` (KnOTS-TIES), ``"task_arithmetic"`` (KnOTS-TA), ``"dare"``,
    ...; ``combination_kwargs`` go to it, e.g. ``density``, ``scale``, ``drop_rate``) and the result is
    ``U @ merge(C_1, ..., C_K)``. Trimming in KnOTS is per layer here (the authors' code trims over the whole
    flattened model). ``keep``: how many coefficients a trim keeps per task, ``"authors"`` ``int(density n) + 1``
    (the KnOTS code's threshold rule, the default) or ``"peft"`` ``int(density n)`` (TIES as peft trims).

    Returns:
        (basis U (d_out, R), merged coefficients C (R, d_in)) in the input dtype; ``U @ C`` is the merged delta.
    """
    d_out, d_in = _check_2d(deltas)
    if combination not in _COEFFICIENT_MERGES:
        raise ValueError(f"unknown KnOTS combination {combination!r}; expected one of {sorted(_COEFFICIENT_MERGES)}")
    dtype = deltas[0].dtype
    if all(isinstance(d, LowRankDelta) for d in deltas):
        # [B_1 A_1, ..., B_K A_K] = [B_1 .. B_K] @ blockdiag(A_1 .. A_K)
        stacked: Delta = LowRankDelta(torch.cat([d.B for d in deltas], dim=1), torch.block_diag(*[d.A for d in deltas]))
    else:
        stacked = torch.cat([d.dense() if isinstance(d, LowRankDelta) else d for d in deltas], dim=1)
    U, s, Vh = _svd(stacked, rtol)  # (d_out, R), (R,), (R, K * d_in)
    coeffs = [c for c in (s[:, None] * Vh).split(d_in, dim=1)]  # K x (R, d_in)
    if keep not in ("authors", "peft"):
        raise ValueError(f"KnOTS keep must be 'authors' or 'peft', got {keep!r}")
    if keep == "authors" and combination in TRIMMING_MERGES and coeffs[0].numel():
        n = coeffs[0].numel()
        kept = min(n, int(float(combination_kwargs["density"]) * n) + 1)
        combination_kwargs = dict(combination_kwargs, density=(kept + 0.5) / n if kept < n else 1.0)  # int(.) = kept
    merged = _COEFFICIENT_MERGES[combination](coeffs, **combination_kwargs)
    return U.to(dtype), merged.to(dtype)


def knots(
    deltas: Sequence[Delta],
    *,
    combination: KnotsCombination = "task_arithmetic",
    rtol: Optional[float] = None,
    keep: KnotsKeep = "authors",
    **combination_kwargs,
) -> Tensor:
    """KnOTS merged delta (d_out, d_in); see :func:`knots_factors`."""
    U, C = knots_factors(deltas, combination=combination, rtol=rtol, keep=keep, **combination_kwargs)
    return U @ C


def _procrustes(x: Tensor) -> Tensor:
    """Nearest matrix with orthonormal columns (or rows, if wide) to ``x``: ``P Q^T`` from ``x = P S Q^T``."""
    P, _, Qh = torch.linalg.svd(x, full_matrices=False)
    return P @ Qh


def tsv_merge_factors(
    deltas: Sequence[Delta],
    *,
    rank_per_task: Optional[int] = None,
    scale: float = 1.0,
    rtol: Optional[float] = None,
) -> tuple[Tensor, Tensor]:
    """TSV-M (Gargiulo et al., CVPR 2025, "Task Singular Vectors"): low-rank, decorrelated sum of task deltas.

    1. per task: ``delta_k = U_k diag(s_k) V_k^T``; keep the top ``rank_per_task`` components (default, the
       paper's rule: ``floor(min(d_out, d_in) / K)``; never more than the numerical rank);
    2. concatenate ``U_hat = [U_1 .. U_K]`` (d_out, R), ``s_hat``, ``V_hat = [V_1 .. V_K]`` (d_in, R);
    3. decorrelate: replace U_hat and V_hat by their nearest orthonormal matrices (Procrustes, ``P Q^T``);
    4. merged delta = ``scale * U_perp diag(s_hat) V_perp^T``, of rank <= R = sum of kept ranks.

    With LoRA deltas of rank r <= min(d_out, d_in)/K, step 1 keeps every component.

    Returns:
        (B (d_out, R), A (R, d_in)) in the input dtype with ``B @ A`` the merged delta.
    """
    d_out, d_in = _check_2d(deltas)
    dtype, device = deltas[0].dtype, deltas[0].device
    if rank_per_task is None:
        rank_per_task = max(1, min(d_out, d_in) // len(deltas))
    if rank_per_task < 1:
        raise ValueError(f"TSV-M rank_per_task must be >= 1, got {rank_per_task}")
    us, ss, vhs = [], [], []
    for d in deltas:
        U, s, Vh = _svd(d, rtol)
        us.append(U[:, :rank_per_task])
        ss.append(s[:rank_per_task])
        vhs.append(Vh[:rank_per_task])
    s_hat = torch.cat(ss)
    if s_hat.numel() == 0:  # every delta is zero
        return torch.zeros(d_out, 0, dtype=dtype, device=device), torch.zeros(0, d_in, dtype=dtype, device=device)
    U_perp = _procrustes(torch.cat(us, dim=1))  # (d_out, R)
    Vh_perp = _procrustes(torch.cat(vhs, dim=0).T).T  # (R, d_in)
    return (scale * U_perp * s_hat[None, :]).to(dtype), Vh_perp.to(dtype)


def tsv_merge(
    deltas: Sequence[Delta],
    *,
    rank_per_task: Optional[int] = None,
    scale: float = 1.0,
    rtol: Optional[float] = None,
) -> Tensor:
    """TSV-M merged delta (d_out, d_in); see :func:`tsv_merge_factors`."""
    B, A = tsv_merge_factors(deltas, rank_per_task=rank_per_task, scale=scale, rtol=rtol)
    return B @ A
