"""Building torchvision's classification models for probe: any input channels, recordable layers.

Three changes to a torchvision model, none of which touches its state_dict keys:

- With input.channels != 3 the first conv (the stem) is replaced by one with the
  same hyper-parameters and `in_channels=input.channels`, initialised the way that
  architecture initialises its convs (`_init_stem`).
- Where the classifier's input is computed by functional code (ShuffleNetV2's
  `x.mean([2, 3])`, DenseNet's `F.relu` and `F.adaptive_avg_pool2d`), the same ops
  are appended as parameter-free modules (`conv5.3`, `features.relu5`/`features.pool5`)
  so the penultimate layer is a module's output; the functional code then acts on a
  [N, C, 1, 1] tensor and changes nothing.
- RegNet's builder computes its block widths with tensors, which fail on the meta
  device; they are computed on the CPU (`_construct`).

`build` then runs the model once on the meta device (nothing allocated) to refuse,
with one line, an input size the architecture cannot take or recorded layers that
are not 2-D or 4-D.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from probe import InputSpec, default_layers

# Architectures whose stem can take any channel count, by name prefix.
ADAPTABLE = (
    "resnet",
    "resnext",
    "wide_resnet",
    "vgg",
    "alexnet",
    "mobilenet",
    "efficientnet",
    "densenet",
    "convnext",
    "regnet",
    "squeezenet",
    "shufflenet",
    "mnasnet",
    "googlenet",
    "inception",
)
# Transformers: their blocks give [N, L, D] tokens (ViT) or channels-last maps (Swin, MaxViT's
# windows).
REFUSED = ("vit_", "swin_", "maxvit")


def classification_archs() -> list[str]:
    """torchvision's classifiers (not its detection, segmentation, video or quantized models)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def supported_archs() -> list[str]:
    return [a for a in classification_archs() if not a.startswith(REFUSED)]


def check_arch(arch: str) -> None:
    """A one-line ValueError unless `arch` is a torchvision classifier probe can record."""
    if arch.startswith(REFUSED):
        raise ValueError(
            f"torchvision {arch!r} is a transformer whose blocks give 3-D token outputs, "
            "which probe "
            f"cannot record; architectures that work: {_families()}"
        )
    known = classification_archs()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"torchvision has no classification model {arch!r}; {hint}architectures that work: "
            f"{_families()}"
        )


def _families() -> str:
    return ", ".join(
        p + ("*" if p not in ("alexnet", "googlenet") else "") for p in ADAPTABLE
    ).replace("inception*", "inception_v3")


def build(arch: str, input: Any, num_classes: int) -> nn.Module:
    """A freshly initialised torchvision `arch` for `input` (an InputSpec), num_classes outputs."""
    check_arch(arch)
    if input.channels != 3 and not arch.startswith(ADAPTABLE):
        raise ValueError(
            f"torchvision {arch!r} takes 3-channel input only in probe "
            f"(input has {input.channels}); "
            f"architectures that take any channel count: {_families()}"
        )
    on_meta = torch.empty(0).device.type == "meta"
    if not on_meta:  # refuse a bad input size before allocating anything
        with torch.device("meta"):
            _check_forward(arch, _make(arch, input, num_classes), input, num_classes)
    model = _make(arch, input, num_classes)
    if on_meta:
        _check_forward(arch, model, input, num_classes)
    return model


def _make(arch: str, input: Any, num_classes: int) -> nn.Module:
    model = _construct(arch, num_classes)
    if arch.startswith("shufflenet"):
        model.conv5.append(nn.AdaptiveAvgPool2d(1))
    elif arch.startswith("densenet"):
        model.features.add_module("relu5", nn.ReLU())
        model.features.add_module("pool5", nn.AdaptiveAvgPool2d(1))
    if input.channels != 3:
        _replace_stem(arch, model, input.channels)
    model.probe_input = (
        input  # for `layers` of architectures without a table (default_layers needs it)
    )
    return model


def _construct(arch: str, num_classes: int) -> nn.Module:
    from torchvision.models import get_model

    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if arch in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)  # logits only, and no FutureWarning
    if not (arch.startswith("regnet") and torch.empty(0).device.type == "meta"):
        return get_model(arch, **kwargs)
    from torchvision.models import regnet

    original = regnet.BlockParams.__dict__["from_init_params"]

    def on_cpu(cls: Any, *args: Any, **kw: Any) -> Any:
        with torch.device("cpu"):
            return original.__func__(cls, *args, **kw)

    regnet.BlockParams.from_init_params = classmethod(on_cpu)
    try:
        return get_model(arch, **kwargs)
    finally:
        regnet.BlockParams.from_init_params = original


def _replace_stem(arch: str, model: nn.Module, channels: int) -> None:
    name, old = next(
        ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), ("", None)
    )
    if old is None or old.in_channels != 3 or old.groups != 1:
        raise ValueError(
            f"torchvision {arch!r}: cannot find its 3-channel stem conv to adapt to "
            f"{channels} channels"
        )
    new = nn.Conv2d(
        channels,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        old.dilation,
        old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    _init_stem(arch, new)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def _init_stem(arch: str, conv: nn.Conv2d) -> None:
    """The init each architecture's own __init__ gives its convs (torchvision 0.15-0.2x)."""
    w = conv.weight
    if arch.startswith("convnext"):
        nn.init.trunc_normal_(w, std=0.02)
    elif arch.startswith("densenet"):
        nn.init.kaiming_normal_(w)
    elif arch.startswith("squeezenet"):
        nn.init.kaiming_uniform_(w)
    elif arch == "googlenet":
        nn.init.trunc_normal_(w, mean=0.0, std=0.01, a=-2, b=2)
    elif arch.startswith("inception"):
        nn.init.trunc_normal_(w, mean=0.0, std=0.1, a=-2, b=2)
    elif arch.startswith(("shufflenet", "alexnet")):
        return  # PyTorch's default Conv2d init, which the new conv already has
    else:  # resnet, resnext, wide_resnet, vgg, mobilenet, efficientnet, mnasnet, regnet:
        # std sqrt(2/fan_out)
        nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


# --- recorded layers ------------------------------------------------------------------------------

# Architectures whose blocks are the stage ends of one Sequential, and their penultimate layer.
_SEQUENTIAL = {
    "vgg": ("features", "classifier.5"),
    "alexnet": ("features", "classifier.5"),
    "mobilenet_v2": ("features", "classifier.0"),
    "mobilenet_v3": ("features", "classifier.2"),
    "efficientnet": ("features", "classifier.0"),
    "convnext": ("features", "classifier.1"),
    "mnasnet": ("layers", "classifier.0"),
    "squeezenet": ("features", "features"),
}


def layers(model: nn.Module, arch: str) -> list[str]:
    """Block outputs in network order, then the penultimate layer (the classifier's input)."""
    if arch.startswith(("resnet", "resnext", "wide_resnet")):
        return ["layer1", "layer2", "layer3", "layer4", "avgpool"]
    if arch.startswith("regnet"):
        return [
            "stem",
            *(f"trunk_output.{n}" for n, _ in model.trunk_output.named_children()),
            "avgpool",
        ]
    if arch.startswith("shufflenet"):
        return ["maxpool", "stage2", "stage3", "stage4", "conv5"]
    if arch.startswith("densenet"):
        return [
            f"features.{n}"
            for n, _ in model.features.named_children()
            if n.startswith("denseblock")
        ] + ["features"]
    for prefix, (seq, penult) in _SEQUENTIAL.items():
        if arch.startswith(prefix):
            blocks = stage_ends(seq, model.get_submodule(seq))
            if penult == seq:  # squeezenet: the last block's output is the penultimate's
                blocks = blocks[:-1]
            return [*blocks, penult]
    inp = getattr(model, "probe_input", None)
    if inp is None:
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        inp = InputSpec(
            first.in_channels, (224, 224), (0.0,) * first.in_channels, (1.0,) * first.in_channels
        )
    return default_layers(model, inp)


def stage_ends(prefix: str, seq: nn.Module) -> list[str]:
    """The children of `seq` after which the resolution drops, and its last child."""
    kids = list(seq.named_children())
    return [
        f"{prefix}.{n}"
        for i, (n, _) in enumerate(kids)
        if i + 1 == len(kids) or _downsamples(kids[i + 1][1])
    ]


def _downsamples(module: nn.Module) -> bool:
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and max(m.stride) > 1:
            return True
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            stride = m.stride if m.stride is not None else m.kernel_size
            if max(stride if isinstance(stride, tuple) else (stride,)) > 1:
                return True
    return False


def _check_forward(arch: str, model: nn.Module, input: Any, num_classes: int) -> None:
    """Run `model` once on the meta device: refuse a size it cannot take, outputs not 2-D/4-D."""
    h, w = input.size
    shapes: dict[str, tuple[int, ...]] = {}

    def note(name: str) -> Any:
        def hook(
            _mod: nn.Module, _inp: Any, out: Any
        ) -> None:  # returns None: the output is left as it is
            shapes.setdefault(
                name, tuple(out.shape) if torch.is_tensor(out) else (type(out).__name__,)
            )

        return hook

    was_training = model.training
    model.eval()
    hooks = []
    try:
        names = layers(model, arch)  # default_layers runs the model, too
        mods = dict(model.named_modules())
        hooks = [mods[n].register_forward_hook(note(n)) for n in names]
        with torch.device("meta"), torch.no_grad():
            out = model(torch.empty(2, input.channels, h, w))
    except Exception as exc:  # torch's own message says which layer and which size
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"torchvision {arch!r} cannot take {input.channels}x{h}x{w} input ({msg}); "
            f"try a larger input size or another architecture"
        ) from None
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    bad = [f"{n} {list(s)}" for n, s in shapes.items() if len(s) not in (2, 4)]
    if bad or tuple(out.shape) != (2, num_classes):
        raise ValueError(
            f"torchvision {arch!r}: recorded outputs must be 2-D or 4-D and logits [N, classes], "
            "got "
            f"{', '.join(bad) or list(out.shape)}; architectures that work: {_families()}"
        )
