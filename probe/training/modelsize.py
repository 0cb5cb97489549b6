"""The size of a SimpleCNN by arithmetic alone: parameters and training memory, without importing torch.

`probe train` options are checked against these bounds before anything is
allocated (probe/config.py, `check_cost`), and reading a config must not import
torch (the CLI starts in milliseconds), so the arithmetic lives here rather than
in probe/model.py, which re-exports it for a `ModelSpec`.
"""

from __future__ import annotations


def param_count(
    depth: int, base_width: int, *, in_channels: int = 3, hidden: int = 256, num_classes: int = 10
) -> int:
    """Parameters of the model: conv weight + bias and BatchNorm weight + bias per layer, then the classifier."""
    total, in_ch, ch = 0, in_channels, base_width
    for i in range(depth):
        total += in_ch * ch * 9 + ch + 2 * ch
        in_ch = ch
        if i % 2 == 1:
            ch = min(ch * 2, 512)
    return total + in_ch * hidden + hidden + hidden * num_classes + num_classes


def train_bytes(
    depth: int,
    base_width: int,
    batch_size: int,
    *,
    in_channels: int = 3,
    hidden: int = 256,
    num_classes: int = 10,
    image_size: int = 32,
) -> int:
    """Rough float32 training memory at `batch_size`: an estimate to refuse absurd sizes, not a prediction of peak.

    Weights, gradients and two optimizer moments (4 copies of the parameters), and
    the activations autograd keeps for a batch: about three tensors per conv layer
    (conv, BatchNorm and ReLU outputs), plus the input.
    """
    per_sample, ch, side = in_channels * image_size * image_size, base_width, image_size
    for i in range(depth):
        per_sample += 3 * ch * side * side
        if i % 2 == 1:
            side = max(side // 2, 1)
            ch = min(ch * 2, 512)
    params = param_count(
        depth, base_width, in_channels=in_channels, hidden=hidden, num_classes=num_classes
    )
    return 4 * (4 * params + batch_size * per_sample)


def width_for_params(
    depth: int, target: int, *, in_channels: int = 3, hidden: int = 256, num_classes: int = 10
) -> int:
    """The base width (1..512) whose model has the parameter count closest to `target`."""
    return min(
        range(1, 513),
        key=lambda w: abs(
            param_count(depth, w, in_channels=in_channels, hidden=hidden, num_classes=num_classes)
            - target
        ),
    )
