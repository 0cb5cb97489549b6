"""The numerics behind probe's representation analyses, free of plotting and plugins.

The notebook ran these with library defaults in float32 on one random training
batch, which made them hard to trust and impossible to compare across epochs.
Everything here computes in float64, is seeded where randomness enters, and is
checked in tests against an independent computation:

- `pca` / `pca_across_epochs`: PCA by SVD of centred data, and a documented way
  to keep the axes of several epochs comparable.
- `tsne`: openTSNE when installed (never slower in docs/representations.md's
  benchmark, though only marginally faster), scikit-learn's otherwise; same
  parameters and initialisation for both, thread pools bounded.
- `cosine_rsm` / `rsm_class_summary`: the representational similarity matrix
  sorted by class, with within- vs between-class similarity (diagonal excluded).
- `linear_cka` / `cka_matrix`: linear CKA (Kornblith et al. 2019), biased or debiased HSIC.
- `gradcheck_conv_layers`: central finite differences (Richardson-extrapolated,
  ReLU/max-pool patterns frozen) against autograd for sampled conv weights, on a
  float64 eval-mode copy of the model.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PCAResult",
    "EpochProjection",
    "pca",
    "pca_across_epochs",
    "procrustes_align",
    "tsne",
    "tsne_backend",
    "cosine_rsm",
    "RSMSummary",
    "rsm_class_summary",
    "linear_cka",
    "cka_matrix",
    "CKA_ESTIMATORS",
    "GradCheckRow",
    "gradcheck_conv_layers",
]


def _as_2d_float64(X: np.ndarray | torch.Tensor) -> np.ndarray:
    """[N, ...] -> [N, D] float64; feature maps [N, C, H, W] are flattened per sample."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        raise ValueError("expected samples x features, got a 1-D array")
    return X.reshape(X.shape[0], -1)


# --- PCA -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PCAResult:
    """A fitted PCA: `projections = (X - mean) @ components.T`."""

    projections: np.ndarray  # [N, k]
    components: np.ndarray  # [k, D], orthonormal rows
    explained_variance: np.ndarray  # [k], variance along each component (ddof=1)
    explained_variance_ratio: np.ndarray  # [k], fraction of the total variance
    mean: np.ndarray  # [D]
    total_variance: float

    def transform(
        self, X: np.ndarray | torch.Tensor, *, center: Literal["own", "fit"] = "fit"
    ) -> np.ndarray:
        """Project other data (e.g. another epoch) on these axes.

        `center="fit"` subtracts the mean this PCA was fitted with; `"own"` subtracts
        the data's own mean, so a drift of the mean between epochs does not move the
        cloud off-centre.
        """
        X = _as_2d_float64(X)
        mu = X.mean(axis=0) if center == "own" else self.mean
        return (X - mu) @ self.components.T


def _sign_convention(components: np.ndarray) -> np.ndarray:
    """Flip each component so its largest-magnitude loading is positive.

    SVD fixes a component only up to sign; a fixed rule keeps repeated fits (and
    the same data on another machine) from flipping the plot.
    """
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def pca(X: np.ndarray | torch.Tensor, n_components: int = 2) -> PCAResult:
    """PCA of `X` [N, D] (or [N, C, H, W], flattened) via SVD of the centred data in float64.

    Components beyond the rank of the data come out with zero explained variance.
    """
    X = _as_2d_float64(X)
    n, d = X.shape
    if n < 2:
        raise ValueError("PCA needs at least two samples")
    if not 1 <= n_components <= d:
        raise ValueError(f"n_components must be in [1, {d}], got {n_components}")
    mean = X.mean(axis=0)
    Xc = X - mean
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    k = min(n_components, len(s))
    components = _sign_convention(vt[:k])
    var = s**2 / (n - 1)
    total = float(var.sum())
    ev = var[:k]
    if k < n_components:  # fewer samples than requested components
        pad = n_components - k
        components = np.vstack([components, np.zeros((pad, d))])
        ev = np.concatenate([ev, np.zeros(pad)])
    ratio = ev / total if total > 0 else np.zeros_like(ev)
    return PCAResult(Xc @ components.T, components, ev, ratio, mean, total)


def procrustes_align(Y: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rotate/reflect `Y` [N, k] (about its centroid) to best match `reference` [N, k].

    Orthogonal Procrustes: the rows must be the same samples in the same order (the
    probe set is fixed, so they are). Distances within `Y` are unchanged, so the
    picture keeps its meaning; only its arbitrary orientation is removed. The
    result is centred.
    """
    Y = np.asarray(Y, dtype=np.float64)
    R = np.asarray(reference, dtype=np.float64)
    if Y.shape != R.shape:
        raise ValueError(f"shapes differ: {Y.shape} vs {R.shape}")
    Yc, Rc = Y - Y.mean(axis=0), R - R.mean(axis=0)
    u, _, vt = np.linalg.svd(Yc.T @ Rc)
    return Yc @ (u @ vt)


@dataclass(frozen=True)
class EpochProjection:
    """One epoch's 2-D (k-D) coordinates on axes shared across epochs."""

    epoch: int
    projections: np.ndarray  # [N, k]
    explained_variance_ratio: np.ndarray  # [k], see `pca_across_epochs`


def pca_across_epochs(
    epochs: Mapping[int, np.ndarray | torch.Tensor],
    n_components: int = 2,
    *,
    align: Literal["reference", "procrustes"] = "reference",
    reference: int | None = None,
) -> tuple[PCAResult, list[EpochProjection]]:
    """Project several epochs' activations of the same probe set on comparable axes.

    PCA fitted separately per epoch gives axes that flip, swap and rotate from one
    epoch to the next, so a sequence of plots would be meaningless. Two remedies:

    - `align="reference"` (default): fit PCA once on the reference epoch (default:
      the last) and project every epoch, centred on its own mean, on those fixed
      axes. The channels are the same units in every epoch, so this shows how the
      final structure emerges. Each epoch's `explained_variance_ratio` is the
      fraction of *that epoch's* variance lying along each reference axis (small
      early on when the variance lies elsewhere; that is information, not a bug).
    - `align="procrustes"`: fit PCA per epoch (each shows its own top-k variance,
      ratios are its own), then rotate/reflect the coordinates onto the reference
      epoch's by orthogonal Procrustes. Axes are then no longer individual PCs
      (only the total over the k axes keeps its meaning), but successive plots
      line up best.

    Returns the reference epoch's PCA and one `EpochProjection` per epoch, sorted.
    """
    if not epochs:
        raise ValueError("no epochs given")
    keys = sorted(epochs)
    ref_key = keys[-1] if reference is None else reference
    if ref_key not in epochs:
        raise ValueError(f"reference epoch {ref_key} not among {keys}")
    ref = pca(epochs[ref_key], n_components)
    out: list[EpochProjection] = []
    for e in keys:
        X = _as_2d_float64(epochs[e])
        if X.shape != (ref.projections.shape[0], ref.components.shape[1]):
            raise ValueError(f"epoch {e}: shape {X.shape} differs from the reference epoch's")
        if align == "reference":
            P = ref.transform(X, center="own")
            total = float(X.var(axis=0, ddof=1).sum())
            ratio = P.var(axis=0, ddof=1) / total if total > 0 else np.zeros(n_components)
        elif align == "procrustes":
            own = pca(X, n_components)
            P = procrustes_align(own.projections, ref.projections)
            ratio = own.explained_variance_ratio
        else:
            raise ValueError(f"align must be 'reference' or 'procrustes', got {align!r}")
        out.append(EpochProjection(e, P, ratio))
    return ref, out


# --- t-SNE ---------------------------------------------------------------------------------

TSNEBackend = Literal["auto", "opentsne", "sklearn"]


def tsne_backend(preferred: TSNEBackend = "auto") -> str:
    """The backend `tsne` will use: openTSNE if installed (faster), else scikit-learn."""
    if preferred == "sklearn":
        return "sklearn"
    has_open = importlib.util.find_spec("openTSNE") is not None
    if preferred == "opentsne" and not has_open:
        raise ImportError("openTSNE is not installed (pip install openTSNE)")
    return "opentsne" if has_open else "sklearn"


def tsne(
    X: np.ndarray | torch.Tensor,
    n_components: int = 2,
    *,
    perplexity: float = 30.0,
    seed: int = 0,
    init: Literal["pca"] | np.ndarray = "pca",
    n_iter: int = 500,
    early_exaggeration_iter: int = 250,
    backend: TSNEBackend = "auto",
    n_jobs: int = 1,
) -> np.ndarray:
    """Seeded t-SNE of `X` [N, D] -> [N, n_components] float64.

    Both backends get the same problem: perplexity, early exaggeration 12 for
    `early_exaggeration_iter` iterations then `n_iter` plain ones, and the same
    initialisation; each uses its own recommended learning rate ("auto": N/12 in
    the exaggerated phase for both, openTSNE raises it to N afterwards). `init="pca"` is this module's PCA
    (deterministic signs); an array init (e.g. an epoch's coordinates on shared PCA
    axes, to keep epochs comparable) is used as given after rescaling. Both are
    rescaled to std 1e-4 as recommended for t-SNE (Kobak & Berens 2019).
    Perplexity is capped at (N - 1) / 3, the largest both backends accept.
    """
    X = _as_2d_float64(X)
    n = X.shape[0]
    if n < 4:
        raise ValueError("t-SNE needs at least four samples")
    perplexity = float(min(perplexity, (n - 1) / 3.0))
    if isinstance(init, str):
        if init != "pca":
            raise ValueError(f"init must be 'pca' or an array, got {init!r}")
        Y0 = pca(X, n_components).projections
    else:
        Y0 = np.asarray(init, dtype=np.float64)
        if Y0.shape != (n, n_components):
            raise ValueError(f"init has shape {Y0.shape}, expected {(n, n_components)}")
    sd = Y0[:, 0].std()
    Y0 = (Y0 - Y0.mean(axis=0)) * (1e-4 / sd if sd > 0 else 1.0)
    if sd == 0:  # degenerate (e.g. constant activations): seeded random start instead
        Y0 = np.random.default_rng(seed).normal(scale=1e-4, size=Y0.shape)

    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    # scikit-learn's Barnes-Hut gradient runs on OpenMP with every core whatever
    # n_jobs says; on a shared machine that oversubscription made it 10x slower
    # (docs/representations.md). n_jobs bounds all thread pools, for both backends.
    with threadpool_limits(limits=n_jobs):
        if tsne_backend(backend) == "opentsne":
            from openTSNE import TSNE as OpenTSNE

            emb = OpenTSNE(
                n_components=n_components,
                perplexity=perplexity,
                learning_rate="auto",
                early_exaggeration=12,
                early_exaggeration_iter=early_exaggeration_iter,
                n_iter=n_iter,
                initialization=Y0,
                random_state=seed,
                n_jobs=n_jobs,
                verbose=False,
            ).fit(X)
            return np.asarray(emb, dtype=np.float64)

        from sklearn.manifold import TSNE as SkTSNE

        return (
            SkTSNE(
                n_components=n_components,
                perplexity=perplexity,
                early_exaggeration=12.0,
                learning_rate="auto",
                max_iter=early_exaggeration_iter + n_iter,
                init=Y0.astype(np.float32),
                random_state=seed,
                n_jobs=n_jobs,
            )
            .fit_transform(X)
            .astype(np.float64)
        )


# --- RSM -----------------------------------------------------------------------------------


def cosine_rsm(X: np.ndarray | torch.Tensor) -> np.ndarray:
    """Cosine similarity between every pair of samples, [N, N] float64.

    A sample whose activations are all zero (possible after ReLU) has no direction:
    its similarities, its diagonal entry included, are 0, as in scikit-learn.
    """
    X = _as_2d_float64(X)
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
    X = _as_2d_float64(X)
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


# --- gradient check ------------------------------------------------------------------------


@dataclass(frozen=True)
class GradCheckRow:
    """One sampled conv weight: autograd's derivative vs the central difference."""

    layer: str
    index: tuple[int, ...]
    analytic: float
    numeric: float
    rel_error: float
    kink: bool  # a ReLU / max-pool switched at w +- eps (the plain difference would be off)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["index"] = list(self.index)
        return d


class _PatternReLU(nn.Module):
    """ReLU whose on/off pattern can be recorded, then replayed (see `_pattern_copy`).

    One pattern per call in a forward pass: a module called more than once (torchvision's
    ResNet blocks apply one `relu` twice) replays each call's own pattern. `start()` before
    each forward pass rewinds to the first call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mode = "record"
        self.masks: list[torch.Tensor] = []
        self.call = 0
        self.switched = False

    def start(self) -> None:
        self.call = 0
        if self.mode == "record":
            self.masks = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on = x > 0
        i, self.call = self.call, self.call + 1
        if self.mode == "record":
            self.masks.append(on)
            return x * on
        mask = self.masks[i]
        self.switched |= bool((on != mask).any())
        return x * (mask if self.mode == "replay" else on)


class _PatternPiecewise(_PatternReLU):
    """ReLU6, Hardsigmoid or Hardswish (MobileNets) with its pieces recorded, then replayed.

    Each input falls in one of three pieces (below `lo`, between, at or above `hi`); the
    recorded piece decides which formula applies, as the recorded on/off pattern does for ReLU.
    """

    BOUNDS = {"relu6": (0.0, 6.0), "hardsigmoid": (-3.0, 3.0), "hardswish": (-3.0, 3.0)}

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.BOUNDS[self.kind]
        piece = (x > lo).to(torch.int8) + (x >= hi).to(
            torch.int8
        )  # 0, 1, 2: torch's own boundaries
        i, self.call = self.call, self.call + 1
        if self.mode == "record":
            self.masks.append(piece)
        else:
            self.switched |= bool((piece != self.masks[i]).any())
            if self.mode == "replay":
                piece = self.masks[i]
        zero = torch.zeros_like(x)
        if self.kind == "relu6":
            return torch.where(
                piece == 0, zero, torch.where(piece == 2, torch.full_like(x, 6.0), x)
            )
        gate = torch.where(
            piece == 0, zero, torch.where(piece == 2, torch.ones_like(x), (x + 3) / 6)
        )
        return gate if self.kind == "hardsigmoid" else x * gate


class _PatternMaxPool(nn.Module):
    """Max-pool whose argmax positions can be recorded, then replayed (one set per call, like `_PatternReLU`)."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool
        self.mode = "record"
        self.indices: list[torch.Tensor] = []
        self.call = 0
        self.switched = False

    def start(self) -> None:
        self.call = 0
        if self.mode == "record":
            self.indices = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pool
        out, idx = F.max_pool2d(
            x, p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode, return_indices=True
        )
        i, self.call = self.call, self.call + 1
        if self.mode == "record":
            self.indices.append(idx)
            return out
        recorded = self.indices[i]
        self.switched |= bool((idx != recorded).any())
        if self.mode == "free":
            return out
        flat = x.flatten(2).gather(2, recorded.flatten(2))
        return flat.view_as(out)


def _pattern_copy(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """A copy of `model` whose ReLUs (ReLU6, Hardsigmoid, Hardswish) and max-pools are pattern-recording modules."""
    m = copy.deepcopy(model)
    swapped: list[nn.Module] = []
    for name, mod in list(m.named_modules()):
        if isinstance(mod, nn.ReLU):
            new: nn.Module = _PatternReLU()
        elif isinstance(mod, nn.ReLU6 | nn.Hardsigmoid | nn.Hardswish):
            new = _PatternPiecewise(type(mod).__name__.lower())
        elif isinstance(mod, nn.MaxPool2d):
            new = _PatternMaxPool(mod)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(m.get_submodule(parent_name) if parent_name else m, child, new)
        swapped.append(new)
    return m, swapped


def gradcheck_conv_layers(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    n_samples_per_layer: int = 8,
    eps: float = 1e-3,
    seed: int = 0,
    *,
    freeze_kinks: bool = True,
    layer_types: tuple[type[nn.Module], ...] = (nn.Conv2d,),
) -> list[GradCheckRow]:
    """Compare autograd with central differences for sampled weights of every conv layer
    (every module of `layer_types`: `(nn.Linear,)` checks an MLP's layers).

    Runs on a float64, eval-mode deep copy on the CPU: float32 (the notebook's
    choice) limits the difference quotient to ~1e-3 relative error, and train-mode
    BatchNorm would both make the loss depend on batch statistics and update the
    running statistics of the model being checked. `model` is never modified.

    The loss is mean cross-entropy over (`x`, `y`); `x` is a normalised float
    batch. For each conv weight, `n_samples_per_layer` entries are drawn with
    `seed`, and the numeric derivative is the Richardson-extrapolated central
    difference (4 D(eps/2) - D(eps)) / 3, D(h) = (L(w + h) - L(w - h)) / (2h),
    whose error is O(eps^4) instead of O(eps^2).

    ReLU and max-pool make the loss piecewise smooth. Autograd gives the derivative
    of the piece the weights lie on, but a perturbation crossing a kink anywhere in
    the batch (likely with ~10^5 units per layer) spoils the difference quotient
    for reasons that have nothing to do with backprop being wrong. With
    `freeze_kinks` (default) the differences are taken with the ReLU on/off
    pattern and max-pool winners recorded at w held fixed: the same piece autograd
    differentiates, and smooth (the logits are affine in one weight; only the
    softmax curves), so eps can be large enough to keep round-off small.

    Measured (docs/representations.md): unfrozen differences are off by up to
    4e-1 at eps=1e-3 and 6e-3 at 1e-6 (kinks); frozen plain differences reach
    1e-8 but degrade to 2e-5 on a trained model (truncation); frozen Richardson
    at the default eps=1e-3 stayed below 2e-7 on every model tried.
    `kink` says whether the unfrozen function switched a unit at w +- eps,
    i.e. whether freezing mattered for that weight. nn.ReLU, nn.ReLU6,
    nn.Hardsigmoid, nn.Hardswish and nn.MaxPool2d modules are frozen (each call
    of a module used twice replays its own pattern); functional calls (F.relu)
    and other piecewise modules (LeakyReLU, Hardtanh, ...) still add kink noise.

    relative error = |a - n| / max(|a|, |n|, 1e-12); entries whose gradient is
    exactly 0 on both sides therefore report 0.
    """
    if eps <= 0:
        raise ValueError("eps must be positive")
    base = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    for p in base.parameters():
        p.requires_grad_(True)
        p.grad = None
    x64 = x.detach().to(device="cpu", dtype=torch.float64)
    y64 = y.detach().to(device="cpu", dtype=torch.long)

    loss = F.cross_entropy(base(x64), y64)
    loss.backward()
    convs = [(n, m) for n, m in base.named_modules() if isinstance(m, layer_types)]
    analytic = {n: m.weight.grad.detach().clone() for n, m in convs}

    probe_model, patterned = _pattern_copy(base)
    probe_model.eval()
    rng = np.random.default_rng(seed)
    rows: list[GradCheckRow] = []

    def f() -> float:
        for mod in patterned:
            mod.start()
        return float(F.cross_entropy(probe_model(x64), y64))

    with torch.no_grad():
        for mod in patterned:
            mod.mode = "record"
        f()
        for mod in patterned:
            mod.mode = "replay" if freeze_kinks else "free"
        for name, _ in convs:
            w = probe_model.get_submodule(name).weight
            k = min(n_samples_per_layer, w.numel())
            picks = np.sort(rng.choice(w.numel(), size=k, replace=False))
            flat = w.view(-1)
            for flat_idx in picks.tolist():
                for mod in patterned:
                    mod.switched = False
                orig = float(flat[flat_idx])

                def central(h: float, flat=flat, flat_idx=flat_idx, orig=orig) -> float:
                    flat[flat_idx] = orig + h
                    lp = f()
                    flat[flat_idx] = orig - h
                    lm = f()
                    flat[flat_idx] = orig
                    return (lp - lm) / (2 * h)

                # Richardson: D(h) = f' + c h^2 + O(h^4), so (4 D(h/2) - D(h)) / 3 = f' + O(h^4)
                num = (4 * central(eps / 2) - central(eps)) / 3
                kink = any(mod.switched for mod in patterned)
                ana = float(analytic[name].view(-1)[flat_idx])
                rel = abs(ana - num) / max(abs(ana), abs(num), 1e-12)
                idx = tuple(int(i) for i in np.unravel_index(flat_idx, tuple(w.shape)))
                rows.append(GradCheckRow(name, idx, ana, num, rel, kink))
    return rows
