"""Parameter blocks: which parameters form one diagonal block of a curvature matrix.

A block is a named group of parameters (`parameter_blocks`: one per convolution or linear
layer, or name patterns); its positions in the flat parameter vector (`block_indices`) pick the
diagonal block H[b, b] that `probe.numerics.curvature.linear.BlockOperator` applies, and
label each coordinate (`block_labels`) so one Hutchinson sample splits into the blocks' shares.
The blocks are disjoint and cover every parameter (the left-overs form the block "other"), so
block traces add up to the full trace.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from probe.numerics.checks import check
from probe.numerics.loss import BatchedLoss

__all__ = [
    "BLOCK_MODES",
    "OTHER_BLOCK",
    "BlockLayout",
    "block_indices",
    "block_labels",
    "parameter_blocks",
]

BLOCK_MODES = ("layer", "none")
OTHER_BLOCK = "other"


def parameter_blocks(
    model: nn.Module, names: Sequence[str], spec: str = "layer"
) -> list[tuple[str, list[str]]]:
    """Parameter names in disjoint blocks: (block name, parameter names), in parameter order.

    "layer": one block per convolution or linear layer (its weight and bias together);
    "none": no blocks; otherwise comma-separated name patterns (fnmatch, e.g.
    "features.*,classifier.*"), each parameter in the first block whose pattern it
    matches. Parameters left over (BatchNorm affine terms under "layer") form one more
    block, "other", so the blocks cover every parameter and their traces add up to the
    full trace.
    """
    spec = spec.strip()
    if spec == "none":
        return []
    order = {n: i for i, n in enumerate(names)}
    groups: dict[str, list[str]] = {}
    if spec == "layer":
        for mod_name, module in model.named_modules():
            if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
                own = [
                    f"{mod_name}.{n}" if mod_name else n
                    for n, _ in module.named_parameters(recurse=False)
                ]
                own = [n for n in own if n in order]
                if own:
                    groups[mod_name or "(model)"] = own
    else:
        patterns = [p.strip() for p in spec.split(",")]
        check(
            all(patterns),
            "--param blocks",
            f"empty pattern in {spec!r}; give 'layer', 'none' or patterns "
            "like 'features.*,classifier.*'",
        )
        check(
            OTHER_BLOCK not in patterns,
            "--param blocks",
            f"{OTHER_BLOCK!r} is the name of the left-over block",
        )
        taken: set[str] = set()
        for pat in patterns:
            hit = [n for n in names if n not in taken and fnmatch.fnmatchcase(n, pat)]
            check(
                bool(hit),
                "--param blocks",
                f"pattern {pat!r} matches no parameter not already in a block "
                f"(names look like {names[0]!r})",
            )
            groups[pat] = hit
            taken.update(hit)
    used = {n for ns in groups.values() for n in ns}
    rest = [n for n in names if n not in used]
    if rest:
        groups[OTHER_BLOCK] = rest
    return sorted(groups.items(), key=lambda kv: order[kv[1][0]])


def block_indices(loss: BatchedLoss, blocks: Sequence[tuple[str, list[str]]]) -> list[torch.Tensor]:
    """Each block's positions in the flat parameter vector of `loss`."""
    offsets, i = {}, 0
    for n, s in zip(loss.names, loss.shapes, strict=True):
        offsets[n] = (i, i + s.numel())
        i += s.numel()
    return [torch.cat([torch.arange(*offsets[n]) for n in ns]) for _, ns in blocks]


def block_labels(dim: int, index: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """Each of `dim` coordinates' block (`index` from `block_indices`); None without blocks."""
    if not index:
        return None
    labels = torch.empty(dim, dtype=torch.long)
    for i, idx in enumerate(index):
        labels[idx] = i
    return labels


@dataclass
class BlockLayout:
    """The blocks of one loss's parameters: (name, parameter names), positions, labels."""

    groups: list[tuple[str, list[str]]]
    index: list[torch.Tensor]
    labels: torch.Tensor | None

    @classmethod
    def of(cls, model: nn.Module, loss: BatchedLoss, spec: str) -> BlockLayout:
        """The blocks `spec` ("none", "layer" or patterns: `parameter_blocks`) makes of `loss`."""
        groups = parameter_blocks(model, loss.names, spec)
        index = block_indices(loss, groups)
        return cls(groups, index, block_labels(loss.dim, index))

    def __len__(self) -> int:
        return len(self.groups)
