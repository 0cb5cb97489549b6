"""How alike two representations are: the representational similarity matrix (RSM) and linear CKA.

- `cosine_rsm` / `rsm_class_summary`: the cosine similarity of every pair of samples, sorted
  by class, with within- vs between-class similarity (diagonal excluded).
- `linear_cka` / `cka_matrix`: linear CKA (Kornblith et al. 2019), with the biased HSIC or
  Song et al.'s unbiased one ("debiased", Nguyen et al. 2021); `cka_matrix` centres each
  representation and computes its self-similarity once for all its pairs.

Guarantees: float64 throughout (`as_samples`); CKA is NaN, not a number that looks valid, where
a side is constant (or, debiased, fewer than 4 samples); a bad argument is a ValueError.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probe.numerics.representations.arrays import as_samples

__all__ = [
    "CKA_ESTIMATORS",
    "RSMSummary",
    "cka_matrix",
    "cosine_rsm",
    "linear_cka",
    "rsm_class_summary",
]


# --- RSM -----------------------------------------------------------------------------------


def cosine_rsm(X: np.ndarray | torch.Tensor) -> np.ndarray:
    """Cosine similarity between every pair of samples, [N, N] float64.

    A sample whose activations are all zero (possible after ReLU) has no direction:
    its similarities, its diagonal entry included, are 0, as in scikit-learn.
    """
    X = as_samples(X)
    norms = np.linalg.norm(X, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    U = X / safe[:, None]
    S = U @ U.T
    np.clip(S, -1.0, 1.0, out=S)
    return S


@dataclass(frozen=True)
class RSMSummary:
    """An RSM sorted by class and its within- vs between-class averages."""

    order: np.ndarray  # permutation that sorts the samples by class (stable)
    sorted_rsm: np.ndarray  # rsm[order][:, order]
    sorted_labels: np.ndarray
    classes: np.ndarray  # the distinct labels, ascending
    within: float  # mean similarity of pairs of distinct samples of the same class
    between: float  # mean similarity of pairs of samples of different classes
    class_means: np.ndarray  # [K, K] mean block similarity; diagonal blocks exclude i == j

    @property
    def contrast(self) -> float:
        """within - between: how much closer same-class samples are than others."""
        return self.within - self.between


def rsm_class_summary(rsm: np.ndarray, labels: np.ndarray | Sequence[int]) -> RSMSummary:
    """Sort `rsm` by class and average it within and between classes, diagonal excluded.

    The diagonal (each sample with itself, 1 by construction) would inflate the
    within-class mean by 1/n_c, so it is left out; pairs count once per ordered
    pair, which gives the same mean as counting unordered pairs for a symmetric RSM.
    """
    rsm = np.asarray(rsm, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(labels)
    if rsm.shape != (n, n):
        raise ValueError(f"rsm shape {rsm.shape} does not match {n} labels")
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    S = rsm[np.ix_(order, order)]
    same = lab[:, None] == lab[None, :]
    off = ~np.eye(n, dtype=bool)
    within_mask, between_mask = same & off, ~same
    within = float(S[within_mask].mean()) if within_mask.any() else float("nan")
    between = float(S[between_mask].mean()) if between_mask.any() else float("nan")
    classes = np.unique(lab)
    K = len(classes)
    means = np.full((K, K), np.nan)
    for a, ca in enumerate(classes):
        ia = lab == ca
        for b, cb in enumerate(classes):
            block = S[np.ix_(ia, lab == cb)]
            if a == b:
                m = ~np.eye(block.shape[0], dtype=bool)
                if m.any():
                    means[a, b] = block[m].mean()
            else:
                means[a, b] = block.mean()
    return RSMSummary(order, S, lab, classes, within, between, means)


# --- CKA -----------------------------------------------------------------------------------


def _centred(X: np.ndarray | torch.Tensor) -> np.ndarray:
    X = as_samples(X)
    return X - X.mean(axis=0)


CKA_ESTIMATORS = ("biased", "debiased")


class _Rep:
    """A centred representation with what CKA reuses across pairs: the row norms, the
    Gram matrix (built once, only when a pair needs the Gram form) and the self-HSIC."""

    def __init__(self, X: np.ndarray | torch.Tensor):
        self.Xc = _centred(X)
        self.n, self.d = self.Xc.shape
        self.sq = np.einsum("ij,ij->i", self.Xc, self.Xc)  # a_i = ||x_i||^2 = K_ii
        self._gram: np.ndarray | None = None
        self._self: dict[str, float] = {}

    @property
    def gram(self) -> np.ndarray:
        if self._gram is None:
            self._gram = self.Xc @ self.Xc.T
        return self._gram

    def self_hsic(self, estimator: str) -> float:
        if estimator not in self._self:
            self._self[estimator] = _hsic(self, self, estimator)
        return self._self[estimator]


def _hsic(A: _Rep, B: _Rep, estimator: str) -> float:
    """HSIC of two centred representations under a linear kernel, up to a factor
    common to every pair with the same n (it cancels in CKA).

    "biased" (Gretton et al. 2005, as in Kornblith et al. 2019): tr(Kc Lc) =
    ||Yc^T Xc||_F^2. "debiased" (Song et al. 2012's unbiased HSIC, used for CKA by
    Nguyen et al. 2021): with K~, L~ the Gram matrices with zeroed diagonals,

        [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)).

    For centred features K 1 = 0, so with a_i = ||x_i||^2, b_i = ||y_i||^2 every term
    is O(n d) beyond the cross product: tr(K~ L~) = tr(K L) - a.b, 1'K~1 = -sum a,
    1'K~L~1 = a.b. The cross product takes the feature form ||Yc^T Xc||^2, O(n d1 d2),
    while d1 d2 <= n^2 or both widths are at most n, and the Gram form <K, L>, with
    each Gram matrix built once per representation, otherwise.
    """
    n = A.n
    if A.d * B.d <= n * n or max(A.d, B.d) <= n:
        tr_kl = float(np.linalg.norm(B.Xc.T @ A.Xc) ** 2)
    else:
        tr_kl = float(np.vdot(A.gram, B.gram))
    if estimator == "biased":
        return tr_kl
    ab = float(A.sq @ B.sq)
    return (tr_kl - ab + A.sq.sum() * B.sq.sum() / ((n - 1) * (n - 2)) - 2 * ab / (n - 2)) / (
        n * (n - 3)
    )


def _cka(A: _Rep, B: _Rep, estimator: str = "biased") -> float:
    """Linear CKA: HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y)); NaN where a self-similarity
    is not positive (a constant side; or, debiased, fewer than 4 samples)."""
    if estimator not in CKA_ESTIMATORS:
        raise ValueError(f"estimator must be one of {CKA_ESTIMATORS}, got {estimator!r}")
    if estimator == "debiased" and A.n < 4:
        return float("nan")  # the unbiased HSIC divides by n (n - 3)
    hxx, hyy = A.self_hsic(estimator), B.self_hsic(estimator)
    if not (hxx > 0 and hyy > 0):
        return float("nan")
    return float(_hsic(A, B, estimator) / np.sqrt(hxx * hyy))


def linear_cka(
    X: np.ndarray | torch.Tensor, Y: np.ndarray | torch.Tensor, estimator: str = "biased"
) -> float:
    """Linear CKA between two representations of the same n samples (Kornblith et al. 2019).

    estimator="biased" (default, Kornblith et al.'s): CKA(X, Y) = ||Yc^T Xc||_F^2 /
    (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc, in float64; in [0, 1],
    but biased upwards when the width is not small against n (two independent random
    representations score well above 0). estimator="debiased": the same ratio of
    Song et al.'s unbiased HSIC (Nguyen et al. 2021); about 0 for independent
    representations, may be slightly negative, needs n >= 4. Both are invariant to
    orthogonal transforms and isotropic scaling of either side; NaN if either side
    is constant (no variance to compare).
    """
    A, B = _Rep(X), _Rep(Y)
    if A.n != B.n:
        raise ValueError(f"different numbers of samples: {A.n} vs {B.n}")
    return _cka(A, B, estimator)


def cka_matrix(
    reps: Mapping[str, np.ndarray | torch.Tensor] | Sequence[np.ndarray | torch.Tensor],
    others: Mapping[str, np.ndarray | torch.Tensor]
    | Sequence[np.ndarray | torch.Tensor]
    | None = None,
    estimator: str = "biased",
) -> np.ndarray:
    """CKA between every pair: of `reps` with itself ([L, L], symmetric, unit diagonal
    where defined) or of `reps` with `others` ([L, M]); `estimator` as in `linear_cka`.

    Each representation is centred once, and its Gram matrix (wide inputs) and
    self-similarity are computed once for all its pairs. Keys of a mapping are only carried for the
    caller; the order of the result follows iteration order.
    """
    A = [_Rep(x) for x in (reps.values() if isinstance(reps, Mapping) else reps)]
    if others is None:
        M = np.eye(len(A))
        for i in range(len(A)):
            M[i, i] = _cka(A[i], A[i], estimator)  # 1, or NaN for a constant layer
            for j in range(i + 1, len(A)):
                M[i, j] = M[j, i] = _cka(A[i], A[j], estimator)
        return M
    B = [_Rep(x) for x in (others.values() if isinstance(others, Mapping) else others)]
    return np.array([[_cka(a, b, estimator) for b in B] for a in A]).reshape(len(A), len(B))
