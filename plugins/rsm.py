"""`rsm`: the cosine representational similarity matrix of the probe set at one layer.

The notebook plotted cosine similarities of 200 unsorted training images, which
shows nothing: here the 1,000 probe images are sorted by class, so class structure
appears as bright diagonal blocks, and it is summarised as two numbers, the mean
similarity within a class and between classes (the diagonal, always 1, left out).
"""

from __future__ import annotations

import probe
from probe.library.representations import RSMParams as Params
from probe.library.representations import rsm_arrays, rsm_figure, rsm_summary

__all__ = ["Params", "register_analyses", "run"]


def run(ctx: probe.Context) -> None:
    import numpy as np

    p = ctx.params
    layer = ctx.resolve_layer(p.layer)
    labels = np.asarray(ctx.probe_set().labels, dtype=np.int64)
    X = ctx.activations(layer, kind=p.kind)
    if X.shape[0] != len(labels):
        raise probe.ProbeError(
            f"{ctx.run.path}: activation dump and probe set disagree on the number of images"
        )
    s = rsm_summary(X, labels, p.center)
    names = ctx.class_names()
    cls_names = [names[c] if c < len(names) else str(c) for c in s.classes]
    title = f"cosine RSM of {layer} ({p.kind}{', centred' if p.center else ''}), epoch {ctx.epoch}"
    ctx.out.figure(
        "rsm",
        rsm_figure(s, cls_names, title),
        caption="Cosine similarity between probe images sorted by class; bright "
        "diagonal blocks on a darker background mean the layer groups images by class. "
        "Contrast = within - between.",
    )
    ctx.out.arrays(
        "rsm",
        attrs={"layer": layer, "kind": p.kind, "center": p.center, "class_names": cls_names},
        **rsm_arrays(s),
    )
    ctx.out.scalar("within", s.within)
    ctx.out.scalar("between", s.between)
    ctx.out.scalar("contrast", s.contrast)
    ctx.out.scalar("layer", layer)


@probe.hookimpl
def register_analyses(register) -> None:
    register(
        probe.Analysis(
            name="rsm",
            run=run,
            params=Params,
            scope="epoch",
            needs={"activations", "probe_set"},
            summary="Cosine similarity matrix of the probe set at a layer, sorted by class; "
            "within- vs between-class.",
            report_order=40,
            caption=(
                "Representational similarity matrix of the probe images sorted by class; bright "
                "blocks on the diagonal mean the layer represents images of one class alike."
            ),
        )
    )
