"""Neural collapse (Papyan, Han & Donoho, 2020): NC1-NC4 of a layer's features.

Papyan et al. found that, trained past zero training error, the last-layer features of a
classifier collapse to their class means (NC1), the centred class means form a simplex
equiangular tight frame (NC2), the classifier's weights align with them (NC3), and the
network's decision becomes the nearest-class-centre rule (NC4). With features h_i [d],
labels y_i among the C classes present, class means mu_c and their mean mu_G:

- mu_G = (1/C) sum_c mu_c, the mean of the class means (equal to the mean of all features
  on a balanced set; Papyan et al.'s code uses it, and it makes the centred means
  M = [mu_c - mu_G] sum to zero, so rank(M) <= C - 1);
- Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, the within-class covariance;
- Sigma_B = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T, the between-class covariance;
- **NC1** = tr(Sigma_W Sigma_B^+) / C, with Sigma_B^+ the pseudo-inverse on its top
  min(C - 1, d) eigen-directions (as Papyan et al.'s `svds(Sigma_B, k=C-1)`), less any of
  those numerically zero (below `RCOND` x the largest, reported as `sigma_b_rank`);
- **NC2**, equinorm: the coefficient of variation std_c / mean_c (std with ddof=1, as
  `torch.std` in their code) of the norms ||mu_c - mu_G||, and of the classifier rows ||w_c||;
  equiangularity: the mean over pairs c != c' of |cos(mu_c - mu_G, mu_c' - mu_G) + 1/(C-1)|
  (0 for a simplex ETF; their Figure 4), with the standard deviation of the cosines (Figure 3);
- **NC3**: || W / ||W||_F - M^T / ||M||_F ||_F^2, W the [C, d] classifier weights (rows of the
  classes present), the bias ignored;
- **NC4**: the share of images on which the network's prediction differs from the nearest
  class centre argmin_c ||h - mu_c||.

The computation never forms a d x d matrix: Sigma_B's eigenvectors come from the SVD of
the d x C matrix M, and tr(Sigma_W Sigma_B^+) = sum_k (1/lambda_k) (1/N) sum_i ((h_i -
mu_{y_i}) . v_k)^2. Everything is float64 numpy; the result lists what may make a number
unreliable (few images per class, a rank-deficient or ill-conditioned Sigma_B, fewer
features than C - 1, missing classes).

The features can come from any set of images (the probe set, training images): the
functions take arrays only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Eigenvalues of Sigma_B below RCOND x the largest count as zero (not inverted).
RCOND = 1e-10
# A kept eigenvalue ratio above this makes NC1 dominated by a direction the class means
# barely span: flagged.
ILL_CONDITIONED = 1e8
# Fewer images than this in some class: its mean and spread are noisy estimates.
FEW_PER_CLASS = 10


@dataclass
class ClassStatistics:
    """Class means and the quantities every measure uses."""

    classes: np.ndarray  # [C] labels present, ascending
    counts: np.ndarray  # [C]
    means: np.ndarray  # [C, d]
    global_mean: np.ndarray  # [d], the mean of the class means
    centred: np.ndarray  # [C, d], means - global_mean (the rows of M^T)
    within: np.ndarray  # [N, d], h_i - mu_{y_i}


def labelled_features(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`features` as a finite float64 [N, d] array and `labels` as int64 [N] (ValueError if not)."""
    h = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if h.ndim != 2 or len(h) != len(y):
        raise ValueError(f"features must be [N, d] with N = {len(y)} labels, got {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("the features contain NaN or infinity")
    return h, y


def class_statistics(features: np.ndarray, labels: np.ndarray) -> ClassStatistics:
    """Class means of `features` [N, d] (float64) by `labels` [N]."""
    h, y = labelled_features(features, labels)
    classes, index, counts = np.unique(y, return_inverse=True, return_counts=True)
    means = np.zeros((len(classes), h.shape[1]))
    np.add.at(means, index, h)
    means /= counts[:, None]
    global_mean = means.mean(axis=0)
    return ClassStatistics(
        classes, counts, means, global_mean, means - global_mean, h - means[index]
    )


@dataclass
class BetweenSpectrum:
    """The eigen-directions of Sigma_B that NC1 inverts."""

    values: np.ndarray  # [r] kept eigenvalues, descending
    vectors: np.ndarray  # [d, r]
    rank: int
    expected_rank: int  # min(C - 1, d)
    condition: float  # values[0] / values[-1]


def between_spectrum(stats: ClassStatistics) -> BetweenSpectrum:
    """Sigma_B = M M^T / C through the SVD of the centred means (no d x d matrix)."""
    c = len(stats.classes)
    u, s, _ = np.linalg.svd(stats.centred.T, full_matrices=False)  # [d, C], [C]
    values = s**2 / c
    expected = min(c - 1, stats.centred.shape[1])
    keep = values[:expected]
    keep = keep[keep > RCOND * values[0]] if values.size and values[0] > 0 else keep[:0]
    r = len(keep)
    condition = float(keep[0] / keep[-1]) if r else float("inf")
    return BetweenSpectrum(keep, u[:, :r], r, expected, condition)


def nc1(stats: ClassStatistics, spectrum: BetweenSpectrum | None = None) -> float:
    """tr(Sigma_W Sigma_B^+) / C."""
    spectrum = spectrum or between_spectrum(stats)
    if spectrum.rank == 0:
        return float("nan")
    z = stats.within @ spectrum.vectors  # [N, r]: within-class deviations along each direction
    quad = np.mean(z**2, axis=0)  # v_k^T Sigma_W v_k
    return float(np.sum(quad / spectrum.values) / len(stats.classes))


def equinorm(vectors: np.ndarray) -> float:
    """Coefficient of variation (std with ddof=1 over mean) of the row norms of `vectors`."""
    norms = np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=1)
    if len(norms) < 2 or norms.mean() == 0:
        return float("nan")
    return float(np.std(norms, ddof=1) / np.mean(norms))


def equiangularity(vectors: np.ndarray) -> tuple[float, float]:
    """(mean over pairs of |cos + 1/(C-1)|, std over pairs of cos) of the rows of `vectors`."""
    v = np.asarray(vectors, dtype=np.float64)
    c = len(v)
    norms = np.linalg.norm(v, axis=1)
    if c < 2 or np.any(norms == 0):
        return float("nan"), float("nan")
    u = v / norms[:, None]
    cos = (u @ u.T)[~np.eye(c, dtype=bool)]
    return float(np.mean(np.abs(cos + 1.0 / (c - 1)))), float(np.std(cos))


def self_duality(weight: np.ndarray, centred: np.ndarray) -> float:
    """|| W / ||W||_F - M^T / ||M||_F ||_F^2 for W [C, d] and the centred means M^T [C, d]."""
    w = np.asarray(weight, dtype=np.float64)
    m = np.asarray(centred, dtype=np.float64)
    if w.shape != m.shape:
        raise ValueError(f"classifier weights {w.shape} and class means {m.shape} differ in shape")
    nw, nm = np.linalg.norm(w), np.linalg.norm(m)
    if nw == 0 or nm == 0:
        return float("nan")
    return float(np.sum((w / nw - m / nm) ** 2))


def nearest_centre(features: np.ndarray, stats: ClassStatistics) -> np.ndarray:
    """The label of the nearest class mean (Euclidean) for each row of `features`."""
    h = np.asarray(features, dtype=np.float64)
    # ||h - mu||^2 = ||h||^2 - 2 h.mu + ||mu||^2; ||h||^2 does not change the argmin
    d2 = -2.0 * h @ stats.means.T + np.sum(stats.means**2, axis=1)[None, :]
    return stats.classes[np.argmin(d2, axis=1)]


@dataclass
class CollapseResult:
    """NC1-NC4 of one layer on one set of images (None: not measurable here, see `notes`)."""

    nc1: float
    nc2_equinorm_means: float
    nc2_equiangular_means: float
    nc2_cosine_std_means: float
    nc2_equinorm_weights: float | None
    nc2_equiangular_weights: float | None
    nc2_cosine_std_weights: float | None
    nc3: float | None
    nc4: float | None  # disagreement of the network with the nearest class centre
    ncc_accuracy: float  # nearest class centre against the labels
    network_accuracy: float | None
    n_images: int
    n_features: int
    n_classes: int
    min_per_class: int
    sigma_b_rank: int
    sigma_b_expected_rank: int
    sigma_b_condition: float
    within_trace: float  # tr(Sigma_W)
    between_trace: float  # tr(Sigma_B)
    notes: list[str] = field(default_factory=list)


def _notes(stats: ClassStatistics, spec: BetweenSpectrum, num_classes: int | None) -> list[str]:
    notes = []
    c, d = len(stats.classes), stats.centred.shape[1]
    if num_classes is not None and c < num_classes:
        notes.append(f"only {c} of {num_classes} classes are present: measures over those {c}")
    if int(stats.counts.min()) < FEW_PER_CLASS:
        notes.append(
            f"some class has {int(stats.counts.min())} images (< {FEW_PER_CLASS}): class means and "
            "within-class spread are noisy"
        )
    if d < c - 1:
        notes.append(
            f"{d} features < C - 1 = {c - 1}: no simplex ETF fits, NC2 cannot reach 0 and "
            "Sigma_B has rank at most d"
        )
    if spec.rank < spec.expected_rank:
        notes.append(
            f"Sigma_B has numerical rank {spec.rank} < {spec.expected_rank}: NC1 inverts only "
            f"{spec.rank} directions"
        )
    if spec.condition > ILL_CONDITIONED:
        notes.append(
            f"Sigma_B is ill-conditioned (eigenvalue ratio {spec.condition:.3g} > "
            f"{ILL_CONDITIONED:g}): NC1 is dominated by a direction the class means barely span"
        )
    return notes


def neural_collapse(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    predictions: np.ndarray | None = None,
    classifier_weight: np.ndarray | None = None,
    num_classes: int | None = None,
) -> CollapseResult:
    """NC1-NC4 of `features` [N, d] with `labels` [N].

    `predictions` [N]: the network's predicted labels (for NC4; None leaves NC4 None).
    `classifier_weight` [num_classes, d]: the last linear layer's weight, row c for label c
    (for NC3 and the weights' NC2; None leaves them None). `num_classes`: how many classes
    the network has, so missing ones are reported.
    """
    stats = class_statistics(features, labels)
    c = len(stats.classes)
    if c < 2:
        raise ValueError(f"neural collapse needs two classes; the labels hold {c}")
    spec = between_spectrum(stats)
    notes = _notes(stats, spec, num_classes)
    h, y = labelled_features(features, labels)
    ncc = nearest_centre(h, stats)
    eq_m, std_m = equiangularity(stats.centred)
    out = dict(nc2_equinorm_weights=None, nc2_equiangular_weights=None, nc2_cosine_std_weights=None)
    out.update(nc3=None, nc4=None, network_accuracy=None)
    if classifier_weight is not None:
        w = np.asarray(classifier_weight, dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != h.shape[1] or w.shape[0] <= int(stats.classes.max()):
            raise ValueError(
                f"classifier weight {w.shape} does not map {h.shape[1]} features to labels "
                f"0..{int(stats.classes.max())}"
            )
        w = w[stats.classes]
        eq_w, std_w = equiangularity(w)
        out.update(nc2_equinorm_weights=equinorm(w), nc2_equiangular_weights=eq_w)
        out.update(nc2_cosine_std_weights=std_w, nc3=self_duality(w, stats.centred))
    if predictions is not None:
        pred = np.asarray(predictions).astype(np.int64)
        if pred.shape != y.shape:
            raise ValueError(f"predictions {pred.shape} and labels {y.shape} differ in shape")
        out.update(nc4=float(np.mean(pred != ncc)), network_accuracy=float(np.mean(pred == y)))
    return CollapseResult(
        nc1=nc1(stats, spec),
        nc2_equinorm_means=equinorm(stats.centred),
        nc2_equiangular_means=eq_m,
        nc2_cosine_std_means=std_m,
        ncc_accuracy=float(np.mean(ncc == y)),
        n_images=len(y),
        n_features=h.shape[1],
        n_classes=c,
        min_per_class=int(stats.counts.min()),
        sigma_b_rank=spec.rank,
        sigma_b_expected_rank=spec.expected_rank,
        sigma_b_condition=spec.condition,
        within_trace=float(np.sum(stats.within**2) / len(y)),
        between_trace=float(np.sum(stats.centred**2) / c),
        notes=notes,
        **out,
    )
