"""The CIFAR ResNets of He et al. 2016 (section 4.2), with the two shortcut options and none.

Depth 6n+2: a 3x3 conv stem (16 channels), three stages of n basic blocks with
16/32/64 channels (each times `width`), the second and third stage starting with a
stride-2 block, then global average pooling and a linear classifier.

The code follows akamaster/pytorch_resnet_cifar10 (the ResNets PyHessian's
experiments use), so its numbers and state_dict keys can be set beside that code's:
kaiming-normal init (fan_in, gain sqrt(2)) of every conv and linear weight, option A
as stride-2 subsampling plus zero channels split evenly on both sides. Differences,
all name-only or numerically inert: the classifier is `fc` (not `linear`); the stem's
ReLU is a module (`relu`) and the pooling is a module (`avgpool`, adaptive, so any
input size works) so that their outputs can be recorded by forward hooks; option A
is a module (`PadShortcut`) instead of a lambda, so the model pickles and prints.

`shortcut="none"` drops the skip connections altogether, as in Li et al. 2018's
"ResNet-56-noshort" (tomgoldstein/loss-landscape): a block is then
relu(bn2(conv2(relu(bn1(conv1(x)))))).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUTS = ("A", "B", "none")


class PadShortcut(nn.Module):
    """He et al.'s option A: identity subsampled by `stride`, zero channels added (no weights)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_lo = (planes - in_planes) // 2
        self.pad_hi = planes - in_planes - self.pad_lo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_lo, self.pad_hi))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_lo}, {self.pad_hi})"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; the shortcut (if any) is added before the last ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}")
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module | None
        if shortcut == "none":
            self.shortcut = None
        elif stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class GlobalAvgPool(nn.Module):
    """Mean over the spatial dimensions: [N, C, H, W] -> [N, C] (the classifier's input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: `conv1`/`bn1`/`relu`, `layer1`..`layer3`, `avgpool`, `fc`."""

    def __init__(
        self,
        depth: int = 20,
        width: int = 1,
        shortcut: str = "A",
        in_channels: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}"
            )
        n = (depth - 2) // 6
        planes = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU()
        in_planes = planes[0]
        for i, p in enumerate(planes):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_planes, p, stride, shortcut))
                in_planes = p
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = GlobalAvgPool()
        self.fc = nn.Linear(planes[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x))


RECORDED = ["relu", "layer1", "layer2", "layer3", "avgpool"]
