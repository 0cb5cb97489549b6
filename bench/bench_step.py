"""Where the time of a training epoch goes, and the convolution floor under it, for any model.

    python bench/bench_step.py [--rounds 8] [--steps 5]   # the default SimpleCNN
    python bench/bench_step.py --model resnet --model-param depth=20 --sections floor,layers

Prints JSON lines:

- floor: the convolution arithmetic of one epoch (--train-images forward + both
  backward products, --val-images forward), this CPU's measured float32
  matrix-multiply rate (2048x2048 sgemm, torch's threads), and the seconds that
  arithmetic takes at that rate.
- layers: every Conv2d of the model, found by forward hooks on one forward pass
  (input shape, stride, padding, dilation, groups, bias, and whether its input needs
  a gradient: the first layer's, fed the images, does not), timed alone at batch 128
  with oneDNN (channels-last, what torch uses): forward, and backward (weight
  gradient, bias gradient, plus the input gradient where the model needs it), in
  GFLOP/s; with --nnpack (the default for simplecnn) the forward also through NNPACK
  (torch._nnpack_spatial_convolution: Winograd/FFT algorithms, fewer multiplications).
  Then conv_only_epoch_s: the seconds one epoch spends in these kernels alone
  (--train-images forward and backward, --val-images forward; `probe train`
  validates on the whole 10,000-image test split by default), the time no
  eager-torch pipeline on this CPU gets under.
- step: one training step (batch 128, channels-last, SGD) in eager mode and under
  torch.compile (inductor), interleaved in one process so that machine noise hits
  both alike; minimum and median over --rounds rounds of --steps steps each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe.contract.families import ModelSpec  # noqa: E402
from probe.training.model import simplecnn_spec  # noqa: E402

BATCH = 128


def emit(**kw) -> None:
    print(
        json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in kw.items()}),
        flush=True,
    )


@dataclass(frozen=True)
class ConvCall:
    """One Conv2d as the model calls it: enough to rerun the same kernel alone."""

    name: str
    in_shape: tuple[int, int, int]  # C, H, W of one image
    out_shape: tuple[int, int, int]
    weight_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    bias: bool
    input_grad: bool  # False where the input is the images (nothing upstream needs its gradient)

    @property
    def flops(self) -> float:
        """Forward multiply-add FLOPs per image (each backward product costs the same)."""
        co, ho, wo = self.out_shape
        _, ci_per_group, kh, kw = self.weight_shape
        return 2.0 * co * ho * wo * ci_per_group * kh * kw

    def label(self) -> str:
        c, h, w = self.in_shape
        k = "x".join(map(str, self.weight_shape[2:]))
        s = "" if self.stride == (1, 1) else f" /{self.stride[0]}"
        g = "" if self.groups == 1 else f" g{self.groups}"
        return f"{self.name}: {c}->{self.out_shape[0]} {k}{s}{g} @{h}x{w}"


def model_spec(family: str, pairs: list[str]) -> ModelSpec:
    """The spec `probe train --model family --model-param ...` builds for CIFAR-10 (10 classes,
    3x32x32)."""
    from probe.training.config import TrainConfig
    from probe.training.model import CIFAR10_INPUT, spec_from_config

    if family == "simplecnn" and not pairs:
        return simplecnn_spec()
    return spec_from_config(TrainConfig(model=family, model_params=tuple(pairs)), CIFAR10_INPUT, 10)


def conv_calls(model: torch.nn.Module, spec: ModelSpec) -> list[ConvCall]:
    """Every Conv2d call of one training-mode forward pass, in call order (forward hooks)."""
    calls: list[ConvCall] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(mod: torch.nn.Conv2d, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        if isinstance(mod.padding, str):
            raise SystemExit(
                f"{names[mod]}: padding={mod.padding!r} is not supported by this bench"
            )
        calls.append(
            ConvCall(
                names[mod],
                tuple(inp[0].shape[1:]),
                tuple(out.shape[1:]),
                tuple(mod.weight.shape),
                pair(mod.stride),
                pair(mod.padding),
                pair(mod.dilation),
                mod.groups,
                mod.bias is not None,
                bool(inp[0].requires_grad),
            )
        )

    hooks = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    try:
        model.train()
        h, w = spec.input.size
        model(
            torch.randn(2, spec.input.channels, h, w)
        )  # the images need no gradient, as in training
    finally:
        for hk in hooks:
            hk.remove()
    return calls


def sgemm_rate(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = min(_time(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n**3 / best


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def floor(calls: list[ConvCall], train_images: int = 10_000, val_images: int = 10_000) -> dict:
    fwd = sum(c.flops for c in calls)
    # training: forward, weight gradient (same count) and input gradient (same, where the input
    # needs one)
    train = train_images * sum(c.flops * (3 if c.input_grad else 2) for c in calls)
    val = val_images * fwd
    rate = sgemm_rate()
    row = dict(
        section="floor",
        conv_mflop_per_image_forward=fwd / 1e6,
        epoch_tflop=(train + val) / 1e12,
        sgemm_gflops=rate / 1e9,
        threads=torch.get_num_threads(),
        floor_epoch_s=(train + val) / rate,
    )
    emit(**row)
    return row


def time_conv(c: ConvCall, repeats: int = 10, nnpack: bool = False) -> dict[str, float]:
    """Seconds of one batch-128 call of `c`, alone, channels-last: forward, backward (and NNPACK
    forward), best of `repeats`."""
    x = torch.randn(BATCH, *c.in_shape).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c.weight_shape).contiguous(memory_format=torch.channels_last)
    b = torch.randn(c.weight_shape[0]) if c.bias else None
    conv = lambda x, w, b: F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)  # noqa: E731
    xg, wg = x.clone().requires_grad_(c.input_grad), w.clone().requires_grad_()
    bg = b.clone().requires_grad_() if b is not None else None
    y = conv(xg, wg, bg)
    g = torch.randn_like(y)
    wrt = [t for t in (xg, wg, bg) if t is not None and t.requires_grad]
    fns = {
        "onednn_forward": lambda: conv(x, w, b),
        "onednn_backward": lambda: torch.autograd.grad(y, wrt, g, retain_graph=True),
    }
    if nnpack and c.groups == 1 and c.dilation == (1, 1) and torch.backends.nnpack.is_available():
        xc = x.contiguous()
        fns["nnpack_forward"] = lambda: torch._nnpack_spatial_convolution(
            xc, w.contiguous(), b, list(c.padding), list(c.stride)
        )
    seconds = {}
    for k, fn in fns.items():
        with torch.no_grad() if "forward" in k else torch.enable_grad():
            fn()
            seconds[k] = min(_time(fn) for _ in range(repeats))
    return seconds


def layers(
    calls: list[ConvCall],
    repeats: int = 10,
    train_images: int = 10_000,
    val_images: int = 10_000,
    nnpack: bool = False,
    quiet: bool = False,
) -> dict:
    """Time every conv call alone; returns the epoch's conv-only seconds (train forward+backward,
    val forward)."""
    fwd_s = bwd_s = 0.0
    for c in calls:
        seconds = time_conv(c, repeats, nnpack)
        flops = c.flops * BATCH
        bwd_flops = flops * (2 if c.input_grad else 1)
        if not quiet:
            emit(
                section="layers",
                layer=c.label(),
                **{
                    f"{k}_gflops": (bwd_flops if "backward" in k else flops) / t / 1e9
                    for k, t in seconds.items()
                },
            )
        fwd_s += seconds["onednn_forward"] / BATCH
        bwd_s += seconds["onednn_backward"] / BATCH
    row = dict(
        section="layers",
        convs=len(calls),
        conv_train_s=train_images * (fwd_s + bwd_s),
        conv_val_s=val_images * fwd_s,
        conv_only_epoch_s=train_images * (fwd_s + bwd_s) + val_images * fwd_s,
        train_images=train_images,
        val_images=val_images,
        threads=torch.get_num_threads(),
    )
    emit(**row)
    return row


def steps(spec: ModelSpec, rounds: int, n: int) -> None:
    torch.manual_seed(0)
    model = spec.build().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    h, w = spec.input.size
    x = torch.randn(BATCH, spec.input.channels, h, w).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, spec.num_classes, (BATCH,))
    variants = {"eager": model, "compiled": torch.compile(model)}

    def step(f) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(f(x), y).backward()
        opt.step()

    t0 = time.perf_counter()
    for f in variants.values():
        for _ in range(3):
            step(f)
    emit(section="step", warmup_s=time.perf_counter() - t0)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for k, f in variants.items():
            times[k].append(_time(lambda f=f: [step(f) for _ in range(n)]) / n)
    for k, t in times.items():
        emit(
            section="step",
            variant=k,
            min_ms=min(t) * 1e3,
            median_ms=statistics.median(t) * 1e3,
            img_s=BATCH / min(t),
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        default="simplecnn",
        help="model family, as `probe train --model` (default simplecnn)",
    )
    p.add_argument(
        "--model-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the family, as `probe train --model-param` (repeatable)",
    )
    p.add_argument(
        "--sections", default="floor,layers,step", help="comma-separated: floor, layers, step"
    )
    p.add_argument("--train-images", type=int, default=10_000)
    p.add_argument("--val-images", type=int, default=10_000)
    p.add_argument(
        "--repeats", type=int, default=10, help="timings per conv kernel (the best is kept)"
    )
    p.add_argument(
        "--nnpack",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time NNPACK's forward (default: on for simplecnn)",
    )
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    sections = set(args.sections.split(","))
    spec = model_spec(args.model, args.model_param)
    torch.manual_seed(0)
    calls = conv_calls(spec.build(), spec)
    emit(
        section="model",
        model=spec.describe(),
        params=sum(p.numel() for p in spec.build().parameters()),
        convs=len(calls),
    )
    if "floor" in sections:
        floor(calls, args.train_images, args.val_images)
    if "layers" in sections:
        nnpack = args.model == "simplecnn" if args.nnpack is None else args.nnpack
        layers(calls, args.repeats, args.train_images, args.val_images, nnpack)
    if "step" in sections:
        steps(spec, args.rounds, args.steps)


if __name__ == "__main__":
    main()
