"""Low-dimensional pictures of a representation, comparable across epochs: PCA, Procrustes, t-SNE.

- `pca` / `pca_across_epochs`: PCA by SVD of centred data (signs fixed by a rule, so repeated
  fits do not flip), and a documented way to keep the axes of several epochs comparable
  (fixed reference axes, or per-epoch PCA rotated onto the reference by Procrustes).
- `procrustes_align`: the orthogonal rotation/reflection that best matches a reference.
- `tsne`: openTSNE when installed (never slower in docs/representations.md's benchmark, though
  only marginally faster), scikit-learn's otherwise; same parameters and initialisation for
  both, thread pools bounded.

Guarantees: float64 throughout (`as_samples`); seeded where randomness enters (t-SNE); a bad
argument is a ValueError saying which.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from probe.numerics.representations.arrays import as_samples

__all__ = [
    "EpochProjection",
    "PCAResult",
    "TSNEBackend",
    "pca",
    "pca_across_epochs",
    "procrustes_align",
    "tsne",
    "tsne_backend",
]


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
        X = as_samples(X)
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
    X = as_samples(X)
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
        X = as_samples(epochs[e])
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
    the exaggerated phase for both, openTSNE raises it to N afterwards). `init="pca"` is this
    module's PCA
    (deterministic signs); an array init (e.g. an epoch's coordinates on shared PCA
    axes, to keep epochs comparable) is used as given after rescaling. Both are
    rescaled to std 1e-4 as recommended for t-SNE (Kobak & Berens 2019).
    Perplexity is capped at (N - 1) / 3, the largest both backends accept.
    """
    X = as_samples(X)
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
