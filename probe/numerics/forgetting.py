"""Example forgetting (Toneva et al. 2019) and data maps (Swayamdipta et al. 2020).

Both read one thing: each recorded training example's prediction after every epoch.

- **Forgetting** (Toneva et al., "An Empirical Study of Example Forgetting during Deep
  Neural Network Learning", ICLR 2019): an example is *forgotten* when it was classified
  correctly at one recorded time and incorrectly at the next. Per example: the number of
  such events, whether it was ever learned (correct at some recorded time), and whether it
  is *unforgettable* (learned, and never forgotten afterwards). Toneva et al. record every
  minibatch presentation; probe records once per epoch, so an example that is forgotten and
  relearned within one epoch is not seen: **per-epoch counts are lower bounds** of theirs.
- **Data maps** (Swayamdipta et al., "Dataset Cartography", EMNLP 2020): per example, over
  the epochs, the *confidence* (mean probability of the true class), the *variability*
  (its standard deviation over epochs, population form as in the paper) and the
  *correctness* (the fraction of epochs in which it was classified correctly).

Everything here is numpy on arrays; the `forgetting` analysis feeds it the run's records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ExampleHistory", "example_history", "softmax_true"]


@dataclass(frozen=True)
class ExampleHistory:
    """Per-example statistics over T recorded times (arrays of length N, the examples)."""

    events: np.ndarray  # int: forgetting events (correct at t, incorrect at t + 1)
    learned: np.ndarray  # bool: correct at some recorded time
    unforgettable: np.ndarray  # bool: learned and never forgotten
    first_learned: np.ndarray  # int: index of the first correct time, -1 if never
    confidence: np.ndarray  # mean over times of p(true class)
    variability: np.ndarray  # std over times of p(true class) (population)
    correctness: np.ndarray  # fraction of times classified correctly
    times: int

    @property
    def never_learned(self) -> np.ndarray:
        return ~self.learned

    def counts(self) -> dict[str, int]:
        return {
            "examples": int(len(self.events)),
            "never_learned": int(self.never_learned.sum()),
            "unforgettable": int(self.unforgettable.sum()),
            "forgotten_at_least_once": int((self.events > 0).sum()),
            "forgetting_events": int(self.events.sum()),
        }


def softmax_true(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p(true class) for logits [..., N, C] and labels [N], computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    idx = np.broadcast_to(labels[..., None], z.shape[:-1] + (1,))
    return np.exp(np.take_along_axis(logp, idx, axis=-1)[..., 0])


def example_history(logits: np.ndarray, labels: np.ndarray) -> ExampleHistory:
    """Forgetting counts and data-map coordinates from logits [T, N, C] (T recorded times in
    order) and the true labels [N]."""
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 3 or logits.shape[1] != len(labels):
        raise ValueError(f"logits must be [times, {len(labels)}, classes], got {logits.shape}")
    correct = logits.argmax(axis=-1) == labels[None, :]
    return history_of(correct, softmax_true(logits, labels))


def history_of(correct: np.ndarray, p_true: np.ndarray | None = None) -> ExampleHistory:
    """The statistics of a [T, N] correctness history (and p(true class), if given)."""
    correct = np.asarray(correct, dtype=bool)
    t, n = correct.shape
    events = (correct[:-1] & ~correct[1:]).sum(axis=0) if t > 1 else np.zeros(n, dtype=int)
    learned = correct.any(axis=0)
    first = np.where(learned, correct.argmax(axis=0), -1)
    p = correct.astype(np.float64) if p_true is None else np.asarray(p_true, dtype=np.float64)
    return ExampleHistory(
        events=events.astype(np.int64),
        learned=learned,
        unforgettable=learned & (events == 0),
        first_learned=first.astype(np.int64),
        confidence=p.mean(axis=0),
        variability=p.std(axis=0),
        correctness=correct.mean(axis=0),
        times=t,
    )
