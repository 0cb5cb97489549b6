"""Where the time of a default training epoch goes, and the floor under it.

    python bench/bench_step.py [--rounds 8] [--steps 5]

Prints JSON lines:

- floor: the convolution arithmetic of one default epoch (10,000 training images
  forward + both backward products, 10,000 validation images forward), this CPU's
  measured float32 matrix-multiply rate (2048x2048 sgemm, torch's threads), and the
  seconds that arithmetic takes at that rate.
- layers: each conv layer at batch 128 with oneDNN (channels-last, what torch uses):
  forward, and backward (weight gradient, plus the input gradient except for the
  first layer), in GFLOP/s; the forward also through NNPACK
  (torch._nnpack_spatial_convolution: Winograd/FFT algorithms, fewer multiplications).
  Then conv_only_epoch_s: the seconds one default epoch spends in these kernels alone
  (10,000 images forward and backward, 10,000 forward for validation), the time
  no eager-torch pipeline on this CPU gets under.
- step: one training step (batch 128, channels-last, SGD) in eager mode and under
  torch.compile (inductor), interleaved in one process so that machine noise hits
  both alike; minimum and median over --rounds rounds of --steps steps each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe.families import ModelSpec  # noqa: E402
from probe.model import simplecnn_spec  # noqa: E402


def emit(**kw) -> None:
    print(json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in kw.items()}), flush=True)


def conv_shapes(spec: ModelSpec, size: int = 32) -> list[tuple[int, int, int]]:
    """(in channels, out channels, input side) of each conv layer, as SimpleCNN builds them."""
    shapes, in_ch, ch, hw = [], spec.in_channels, spec.params["base_width"], size
    for i in range(spec.params["depth"]):
        shapes.append((in_ch, ch, hw))
        in_ch = ch
        if i % 2 == 1:
            hw //= 2
            ch = min(ch * 2, 512)
    return shapes


def conv_flops(in_ch: int, out_ch: int, hw: int, images: int = 1) -> float:
    """Forward multiply-add FLOPs of a 3x3, padding-1 convolution."""
    return 2.0 * images * hw * hw * out_ch * in_ch * 9


def conv_flops_per_image(spec: ModelSpec, size: int = 32) -> tuple[float, float]:
    """Forward FLOPs of the conv layers per image, and of the first layer alone."""
    flops = [conv_flops(*shape) for shape in conv_shapes(spec, size)]
    return sum(flops), flops[0]


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


def floor(train_images: int = 10_000, val_images: int = 10_000) -> None:
    fwd, first = conv_flops_per_image(simplecnn_spec())
    # training: forward, weight gradient (same count) and input gradient (same, except the first layer's)
    train = train_images * (3 * fwd - first)
    val = val_images * fwd
    rate = sgemm_rate()
    emit(section="floor", conv_mflop_per_image_forward=fwd / 1e6, epoch_tflop=(train + val) / 1e12,
         sgemm_gflops=rate / 1e9, threads=torch.get_num_threads(), floor_epoch_s=(train + val) / rate)


def layers(repeats: int = 10, train_images: int = 10_000, val_images: int = 10_000) -> None:
    nnpack = torch.backends.nnpack.is_available()  # also initialises NNPACK
    epoch_s = 0.0
    for i, (in_ch, ch, hw) in enumerate(conv_shapes(simplecnn_spec())):
        x, w, b = torch.randn(128, in_ch, hw, hw), torch.randn(ch, in_ch, 3, 3), torch.randn(ch)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        x_grad = x_cl.clone().requires_grad_(i > 0)  # the first layer's input needs no gradient
        w_grad, b_grad = w.clone().requires_grad_(), b.clone().requires_grad_()
        y = F.conv2d(x_grad, w_grad, b_grad, padding=1)
        g = torch.randn_like(y)
        flops = conv_flops(in_ch, ch, hw, images=128)
        fns = {"onednn_forward": lambda x_cl=x_cl, w=w, b=b: F.conv2d(x_cl, w, b, padding=1),
               "onednn_backward": lambda y=y, g=g: y.backward(g, retain_graph=True)}
        if nnpack:
            fns["nnpack_forward"] = lambda x=x, w=w, b=b: torch._nnpack_spatial_convolution(x, w, b, [1, 1])
        seconds = {}
        for k, fn in fns.items():
            with torch.no_grad() if "forward" in k else contextlib.nullcontext():
                fn()
                seconds[k] = min(_time(fn) for _ in range(repeats))
        bwd_flops = flops * (2 if i > 0 else 1)
        emit(section="layers", layer=f"{in_ch}->{ch} @{hw}x{hw}",
             **{f"{k}_gflops": (bwd_flops if "backward" in k else flops) / t / 1e9 for k, t in seconds.items()})
        epoch_s += ((train_images + val_images) * seconds["onednn_forward"]
                    + train_images * seconds["onednn_backward"]) / 128
    emit(section="layers", conv_only_epoch_s=epoch_s)


def steps(rounds: int, n: int) -> None:
    torch.manual_seed(0)
    model = simplecnn_spec().build().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
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
        emit(section="step", variant=k, min_ms=min(t) * 1e3, median_ms=statistics.median(t) * 1e3,
             img_s=128 / min(t))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    floor()
    layers()
    steps(args.rounds, args.steps)


if __name__ == "__main__":
    main()
