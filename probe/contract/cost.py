"""What one job of an analysis costs, in work units a user can see coming: `Cost`, `RunInfo`.

An analysis may declare `cost(params, info) -> Cost | list[Cost]` on its `Analysis` record:
how many Hessian-vector products, forward+backward passes or forward passes of how many
images one job performs, counted from its parameters (the counts the numerics perform, or
their upper bound where a solver stops when it converges: `upto=True`). `probe analyze`
multiplies the counts by the time of one unit measured once on the run's model and prints
the estimate before it starts; `--dry-run` prints it and computes nothing. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["UNITS", "Cost", "RunInfo"]

# What one unit is, per image: "forward" (no gradient), "backward" (a forward and a backward
# pass: one gradient), "hvp" (a Hessian- or GGN-vector product: a gradient and its derivative).
UNITS = ("forward", "backward", "hvp")


@dataclass(frozen=True)
class Cost:
    """`units` passes of kind `unit` over `images` images each, per job.

    `upto`: `units` is an upper bound (a solver that stops on convergence). `factor`: how much
    one unit costs relative to the measured float32 one (gradcheck's float64 forwards under a
    dispatch mode cost several times a plain forward). `note` names what the units are.
    """

    units: int
    unit: str
    images: int
    upto: bool = False
    factor: float = 1.0
    note: str = ""

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"cost unit must be one of {UNITS}, got {self.unit!r}")
        if self.units < 0 or self.images < 0 or self.factor <= 0:
            raise ValueError("cost units and images must be >= 0 and factor > 0")


@dataclass(frozen=True)
class RunInfo:
    """What a cost declaration may need to know about the run and the job.

    `stored_images`: images in the stored analysis batch; `n_params`: trainable parameters;
    `conv_layers` / `linear_layers`: Conv2d and Linear modules; `epochs`: epochs the job covers.
    """

    stored_images: int
    n_params: int
    conv_layers: int
    linear_layers: int
    epochs: int = 1

    def images(self, n_images: int, batches: int = 1) -> int:
        """Images of a batch as the plugins select them: a single batch is capped at what is
        stored, B batches of n_images each need B * n_images."""
        return min(n_images, self.stored_images) if batches == 1 else n_images
