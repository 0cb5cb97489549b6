"""The run plan: everything the writer of one run must know, fixed before the first byte is written.

`probe train`, `probe.Recorder` and `probe import` each turn their own options into one
`RunPlan`; the run writer (probe.rundir.writer) writes what the plan holds and nothing
else. The probe set, the validation order and the analysis batch are drawn here, from
the seed, so one seed gives the same images whichever front made the run:

- the probe set: `probe_set_size` class-stratified test images (seed);
- the validation order: the probe set first (its activations are captured during the
  validation pass that runs anyway), then the rest of the test split, or with `val_size`
  a seeded, class-stratified part of it (seed + 3), in index order;
- the analysis batch: `analysis_batch_size` images of the training subset (seed + 2),
  in index order;
- the recorded examples: `example_records` class-stratified images of the training subset
  (seed + 4), in index order, whose logits are recorded after every epoch (0: none).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from probe.contract.families import ModelSpec
from probe.datasets import tensors as data

FORMAT = "probe-run/1"


@dataclass(frozen=True, eq=False)
class RunPlan:
    """One run as its writer sees it: where, which model on which data, what is validated, dumped.

    `train` is config.json's `train` table (probe train: every config key; a recorder:
    what it knows); with `train["epochs"]` None the writer records the last recorded
    epoch there. `source` is config.json's `source` (None for probe train, whose runs
    have none). `train_indices` is the training subset (indices into the training
    split). The drawn indices (`probe_indices`, `val_order`, `analysis_indices`) are
    computed once, at construction.
    """

    run_dir: Path
    spec: ModelSpec
    dataset: data.Dataset
    device: torch.device
    train: Mapping[str, Any]
    train_indices: torch.Tensor
    seed: int
    probe_set_size: int
    analysis_batch_size: int
    val_size: int | None
    val_batch_size: int
    full_maps: tuple[str, ...] = ()
    precision: str = "fp32"
    channels_last: bool = False
    config_hash: str = ""
    augmentation: Mapping[str, Any] | None = None
    source: Mapping[str, Any] | None = None
    example_records: int = 0
    probe_indices: torch.Tensor = field(init=False)
    val_order: torch.Tensor = field(init=False)
    analysis_indices: torch.Tensor = field(init=False)
    example_indices: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        object.__setattr__(self, "train", MappingProxyType(dict(self.train)))
        object.__setattr__(self, "full_maps", tuple(self.full_maps))
        probe, order = validation_order(
            self.dataset.test_y, self.probe_set_size, self.val_size, self.seed
        )
        object.__setattr__(self, "probe_indices", probe)
        object.__setattr__(self, "val_order", order)
        object.__setattr__(
            self,
            "analysis_indices",
            analysis_indices(self.train_indices, self.analysis_batch_size, self.seed),
        )
        object.__setattr__(
            self,
            "example_indices",
            example_indices(
                self.dataset.train_y, self.train_indices, self.example_records, self.seed
            ),
        )

    @property
    def layers(self) -> list[str]:
        """The modules whose pooled outputs every dump holds (the family's recorded layers)."""
        return self.spec.recorded_layers()

    @property
    def command(self) -> str:
        """What the lock record names as the writer: `train`, `recorder` or `import`."""
        return str(self.source.get("kind", "record")) if self.source is not None else "train"

    def config(self, resolved: Mapping[str, Any], epochs: int | None = None) -> dict[str, Any]:
        """config.json: the plan's part, then `resolved` (versions, device, seed); with `epochs`,
        the `train` table's epochs (a recorder that was given no planned number)."""
        train = dict(self.train)
        if epochs is not None:
            train["epochs"] = epochs
        out: dict[str, Any] = {
            "format": FORMAT,
            "train": train,
            "model_spec": self.spec.to_dict(),
            "num_params": self.spec.num_params(),
            "augmentation": dict(self.augmentation) if self.augmentation is not None else None,
            "config_hash": self.config_hash,
            "data_source": self.dataset.source,
            "classes": list(self.dataset.classes),
            **resolved,
        }
        if self.source is not None:
            out["source"] = dict(self.source)
        return out


def validation_order(
    labels: torch.Tensor, probe_set_size: int, val_size: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probe-set indices, validation order) into a test split of `labels` (module docstring)."""
    probe = data.stratified(labels, min(probe_set_size, len(labels)), seed)
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[probe] = False
    rest_idx = rest.nonzero().flatten()
    if val_size is not None and val_size < len(labels):  # a seeded, stratified rest
        pick = data.stratified(labels[rest_idx], val_size - len(probe), seed + 3)
        rest_idx = rest_idx[pick].sort().values
    return probe, torch.cat([probe, rest_idx])


def analysis_indices(train_indices: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """The analysis batch: `size` of the training subset's indices, seeded, in index order."""
    g = torch.Generator().manual_seed(seed + 2)
    return train_indices[torch.randperm(len(train_indices), generator=g)[:size].sort().values]


def example_indices(
    train_y: torch.Tensor, train_indices: torch.Tensor, size: int, seed: int
) -> torch.Tensor:
    """The recorded examples: `size` class-stratified indices of the training subset, seeded,
    in index order (empty for size 0)."""
    if size <= 0 or len(train_indices) == 0:
        return torch.zeros(0, dtype=torch.long)
    pick = data.stratified(train_y[train_indices], min(size, len(train_indices)), seed + 4)
    return train_indices[pick].sort().values
