"""Linear probes (Alain & Bengio, 2016): how linearly decodable the classes are from a layer.

A linear probe is a linear classifier trained on a frozen layer's features; its held-out
accuracy measures how much class information a linear read-out can find there. Alain &
Bengio trained one per layer and watched the accuracy grow with depth and with training.

Here the classifier is scikit-learn's multinomial logistic regression (`LogisticRegression`,
solver lbfgs, an L2 penalty of inverse strength `C` on the weights, not on the intercept),
fitted on each feature standardised to zero mean and unit variance with the training
part's statistics (`StandardScaler`; a constant feature is left unscaled), and scored by
stratified k-fold cross-validation (`StratifiedKFold(k, shuffle=True, random_state=seed)`):
the accuracy is the mean over the k test folds, each image in exactly one test fold. Two
classes give sklearn's binary logistic regression (the same model with one weight vector).

Everything is in float64 on numpy arrays: no torch, no files. `fewest_per_class` says
whether a stratified k-fold split exists (every class needs at least k images).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from probe.numerics.collapse import labelled_features

# Below this many test images of a class per fold, a fold's accuracy moves by more than
# 20 points per misclassified image of that class: the result says so.
FEW_TEST_PER_CLASS = 5


@dataclass
class ProbeResult:
    """Cross-validated accuracy of one linear probe, and what may make it unreliable.

    `accuracy` is the mean of `fold_accuracies` (the folds differ in size by at most one
    image per class); `train_accuracy` is the mean accuracy on the training parts (a large
    gap to `accuracy` is over-fitting of the probe, not of the network). `converged` is False
    when a fit stopped at `max_iter` (its accuracy may still move). `chance` is the share of
    the most frequent class.
    """

    accuracy: float
    accuracy_std: float  # standard deviation over the folds (ddof=0)
    fold_accuracies: list[float]
    train_accuracy: float
    converged: bool
    iterations: int  # the most lbfgs iterations any fold's fit took
    n_images: int
    n_features: int
    n_classes: int
    folds: int
    chance: float
    min_test_per_class: int
    warnings: list[str] = field(default_factory=list)


def fewest_per_class(labels: np.ndarray) -> tuple[int, int]:
    """(label, count) of the least frequent class present in `labels`."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    i = int(np.argmin(counts))
    return int(values[i]), int(counts[i])


def fold_indices(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, test) index pairs of a stratified, shuffled, seeded k-fold split."""
    labels = np.asarray(labels)
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(split.split(np.zeros((len(labels), 1)), labels))


def _fit_fold(
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    *,
    C: float,
    max_iter: int,
    tol: float,
    standardize: bool,
) -> tuple[float, float, int]:
    """(test accuracy, train accuracy, iterations) of one fold's probe."""
    xtr, xte = x[train], x[test]
    if standardize:
        scaler = StandardScaler().fit(xtr)
        xtr, xte = scaler.transform(xtr), scaler.transform(xte)
    clf = LogisticRegression(C=C, max_iter=max_iter, tol=tol, solver="lbfgs")
    with warnings.catch_warnings():
        # the iteration count says it, per fold, in the result
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xtr, y[train])
    test_acc = float(np.mean(clf.predict(xte) == y[test]))
    train_acc = float(np.mean(clf.predict(xtr) == y[train]))
    return test_acc, train_acc, int(np.max(clf.n_iter_))


def linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    folds: int = 5,
    C: float = 1.0,
    seed: int = 0,
    max_iter: int = 1000,
    tol: float = 1e-4,
    standardize: bool = True,
    blas_threads: int | None = 1,
) -> ProbeResult:
    """Stratified k-fold accuracy of a multinomial logistic-regression probe on `features` [N, d].

    Raises ValueError when a class has fewer than `folds` images (no stratified split
    exists) or when fewer than two classes are present. `blas_threads`: BLAS threads
    during the fits (None: the library's default). lbfgs on a probe's small matrices
    gains nothing from threads, and OpenBLAS's spinning threads on shared cores made one
    probe of 1,000 x 256 features 40-70x slower (2 s on one thread, 77-143 s on two).
    """
    x, y = labelled_features(features, labels)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"a probe needs two classes; the labels hold {len(classes)}")
    label, fewest = fewest_per_class(y)
    if fewest < folds:
        raise ValueError(
            f"class {label} has {fewest} images, fewer than the {folds} folds a stratified "
            "split needs"
        )
    pairs = fold_indices(y, folds, seed)
    with threadpool_limits(blas_threads):
        fits = [
            _fit_fold(x, y, tr, te, C=C, max_iter=max_iter, tol=tol, standardize=standardize)
            for tr, te in pairs
        ]
    test_accs = [f[0] for f in fits]
    iterations = max(f[2] for f in fits)
    min_test = min(int(np.min(np.unique(y[te], return_counts=True)[1])) for _, te in pairs)
    notes = []
    converged = iterations < max_iter
    if not converged:
        notes.append(
            f"lbfgs stopped at max_iter={max_iter} in at least one fold (not converged; "
            "raise max_iter or lower C)"
        )
    if min_test < FEW_TEST_PER_CLASS:
        notes.append(
            f"a test fold holds only {min_test} images of some class: fold accuracies are coarse"
        )
    return ProbeResult(
        accuracy=float(np.mean(test_accs)),
        accuracy_std=float(np.std(test_accs)),
        fold_accuracies=test_accs,
        train_accuracy=float(np.mean([f[1] for f in fits])),
        converged=converged,
        iterations=iterations,
        n_images=len(y),
        n_features=x.shape[1],
        n_classes=len(classes),
        folds=folds,
        chance=float(np.max(np.unique(y, return_counts=True)[1]) / len(y)),
        min_test_per_class=min_test,
        warnings=notes,
    )
