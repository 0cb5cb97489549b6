"""CIFAR-10, probe's default data set: its class names and per-channel statistics.

In the contract because the first model-spec format (`{"arch": "SimpleCNN", ...}`)
stored no normalisation when it was CIFAR-10's: `probe.contract.families` reads such
a spec with these. Plugins and users import them from `probe.datasets`.
"""

from __future__ import annotations

from probe.contract.records import InputSpec

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_INPUT = InputSpec(3, (32, 32), CIFAR10_MEAN, CIFAR10_STD)
