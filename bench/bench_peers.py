"""probe beside the peer packages a user would pick, on one checkpoint and one batch.

Run by hand (not a test; the peers are an optional extra, `pip install -e .[peers]`):

    python bench/bench_peers.py --run RUN [--epoch E] [--n 256] [--threads 1]
        [--section eigen|landscape|cka|all]

On the run's stored analysis batch (its first --n images, eval-mode BatchNorm, float32):
- eigen:     the top Hessian eigenvalue. Reference: scipy's `eigsh` (ARPACK, tol 1e-10)
             on probe's Hessian-vector product. probe's Lanczos at its defaults against
             PyHessian's power iteration at its defaults (tol 1e-3) and at tol 1e-4:
             products used and relative error against the reference.
- landscape: an 11x11 filter-normalised plane: `probe.numerics.landscape.surface` against
             `loss_landscapes.random_plane` (same images, same model, one batch per point).
- cka:       the CKA matrix between the model's conv layers' outputs (flattened
             feature maps) on the batch, forward pass included: probe (biased and
             debiased) against `torch_cka.CKA.compare` (debiased HSIC, Nguyen et al.),
             and the largest difference between probe's debiased values and torch-cka's;
             then the same matrix on channel-mean-pooled outputs (what probe stores),
             the matrix alone: probe against torch-cka's own HSIC loop on the same tensors.
Times are CPU seconds (time.process_time) and wall seconds, the minimum of --repeats;
a peer that cannot be imported is reported as such and the rest is still measured.
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe.numerics import curvature as C  # noqa: E402
from probe.numerics import landscape as L  # noqa: E402
from probe.numerics import representations as R  # noqa: E402


def emit(**kw) -> None:
    print(
        json.dumps({k: (float(f"{v:.5g}") if isinstance(v, float) else v) for k, v in kw.items()}),
        flush=True,
    )


def timed(fn, repeats: int):
    """(result of the last call, min CPU seconds, min wall seconds)."""
    cpu, wall, out = [], [], None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return out, min(cpu), min(wall)


def peer(module: str):
    """The imported peer module, or the one-line reason it cannot be used."""
    try:
        return importlib.import_module(module), None
    except Exception as e:  # an old package may fail on a new torch in any way
        return None, f"{type(e).__name__}: {e}"


# --- eigen -------------------------------------------------------------------------------------


def bench_eigen(model, x, y, args) -> None:
    from scipy.sparse.linalg import LinearOperator, eigsh

    loss = C.BatchedLoss(model, x, y, batch_size=len(x))
    op = C.HessianOperator(loss)

    def mv(v: np.ndarray) -> np.ndarray:
        return (
            op.matvec(torch.from_numpy(np.ascontiguousarray(v).reshape(-1)).to(op.dtype))
            .double()
            .numpy()
        )

    (vals, _), cpu, wall = timed(
        lambda: eigsh(
            LinearOperator((op.dim, op.dim), matvec=mv, dtype=np.float64),
            k=1,
            which="LA",
            tol=1e-10,
            v0=np.ones(op.dim),
        ),
        1,
    )
    ref = float(vals[0])
    emit(
        section="eigen",
        method="scipy eigsh (reference, tol 1e-10)",
        top=ref,
        hvps=op.hvps,
        cpu_s=cpu,
        wall_s=wall,
        n_images=len(x),
    )

    def probe_lanczos():
        o = C.HessianOperator(loss)
        r, _ = C.lanczos(o, 1)
        return r

    r, cpu, wall = timed(probe_lanczos, args.repeats)
    emit(
        section="eigen",
        method="probe Lanczos (defaults: tol 1e-3, residual 1e-2)",
        top=float(r.values[0]),
        hvps=r.hvps,
        rel_error=abs(float(r.values[0]) - ref) / abs(ref),
        residual=float(r.residuals[0]),
        cpu_s=cpu,
        wall_s=wall,
    )

    ph, why = peer("pyhessian.hessian")
    if ph is None:
        emit(section="eigen", method="PyHessian", error=why)
        return
    for tol in (1e-3, 1e-4):
        count = {"n": 0}
        original = ph.hessian_vector_product

        def counting(*a, original=original, count=count, **k):
            count["n"] += 1
            return original(*a, **k)

        ph.hessian_vector_product = counting
        try:

            def run(tol=tol, count=count):
                count["n"] = 0
                torch.manual_seed(0)
                h = ph.hessian(
                    copy.deepcopy(model).eval(), F.cross_entropy, data=(x, y), cuda=False
                )
                return h.eigenvalues(maxIter=1000, tol=tol, top_n=1)[0][0]

            top, cpu, wall = timed(run, args.repeats)
        finally:
            ph.hessian_vector_product = original
        emit(
            section="eigen",
            method=f"PyHessian power iteration (tol {tol:g})",
            top=float(top),
            hvps=count["n"],
            rel_error=abs(float(top) - ref) / abs(ref),
            cpu_s=cpu,
            wall_s=wall,
        )


# --- landscape ---------------------------------------------------------------------------------


def bench_landscape(model, x, y, args) -> None:
    dirs = L.random_directions(model, 2, kind="filter", seed=0)
    s, cpu, wall = timed(
        lambda: L.surface(model, x, y, dirs, resolution=11, batch_size=len(x)), args.repeats
    )
    emit(
        section="landscape",
        method="probe.numerics.landscape.surface 11x11",
        points=121,
        cpu_s=cpu,
        wall_s=wall,
        center_loss=s.center_loss,
        n_images=len(x),
    )
    ll, why = peer("loss_landscapes")
    if ll is None:
        emit(section="landscape", method="loss-landscapes", error=why)
        return
    metrics, why = peer("loss_landscapes.metrics")
    if metrics is None:
        emit(section="landscape", method="loss-landscapes", error=why)
        return
    metric = metrics.Loss(F.cross_entropy, x, y)

    def run():
        torch.manual_seed(0)
        with torch.no_grad():
            return ll.random_plane(
                copy.deepcopy(model).eval(),
                metric,
                distance=1,
                steps=11,
                normalization="filter",
                deepcopy_model=True,
            )

    grid, cpu2, wall2 = timed(run, args.repeats)
    emit(
        section="landscape",
        method="loss_landscapes.random_plane 11x11",
        points=int(np.asarray(grid).size),
        cpu_s=cpu2,
        wall_s=wall2,
        probe_speedup_cpu=cpu2 / cpu,
        probe_speedup_wall=wall2 / wall,
    )


# --- CKA -----------------------------------------------------------------------------------------


def block_outputs(model) -> list[str]:
    """Names of the modules whose outputs are compared: the conv blocks' last ReLU/pool."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    return names


def bench_cka(model, x, y, args) -> None:
    layers = block_outputs(model)

    def features() -> list[torch.Tensor]:
        return [o.flatten(1) for o in _maps(model, x, layers)]

    results = {}
    for est in ("biased", "debiased"):
        M, cpu, wall = timed(
            lambda est=est: R.cka_matrix([f.numpy() for f in features()], estimator=est),
            args.repeats,
        )
        results[est] = (M, cpu, wall)
        emit(
            section="cka",
            method=f"probe cka_matrix ({est}, float64)",
            layers=len(layers),
            cpu_s=cpu,
            wall_s=wall,
            n_images=len(x),
            widths=[int(f.shape[1]) for f in features()],
        )
    tc, why = peer("torch_cka")
    if tc is None:
        emit(section="cka", method="torch-cka", error=why)
        return
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(x))

    def run():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m1, m2 = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
            c = tc.CKA(
                m1,
                m2,
                model1_name="a",
                model2_name="b",
                model1_layers=layers,
                model2_layers=layers,
                device="cpu",
            )
            c.compare(loader)
        return c.hsic_matrix.double().numpy()

    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        T, cpu, wall = timed(run, args.repeats)
    emit(
        section="cka",
        method="torch_cka.CKA.compare (debiased, float32)",
        layers=len(layers),
        cpu_s=cpu,
        wall_s=wall,
        probe_biased_speedup_cpu=cpu / results["biased"][1],
        probe_debiased_speedup_cpu=cpu / results["debiased"][1],
        max_abs_diff_vs_probe_debiased=float(np.abs(T - results["debiased"][0]).max()),
    )

    # The representations probe stores: channel means of each conv output ([n, C], C <= 64 here).
    pooled = [o.mean((2, 3)) if o.dim() == 4 else o.flatten(1) for o in _maps(model, x, layers)]
    kernel = tc.CKA.__new__(tc.CKA)
    kernel.device = "cpu"

    def torch_cka_loop():
        """torch-cka's compare() body on given features: Gram, zeroed diagonal, its _HSIC per
        pair."""
        M = torch.zeros(len(pooled), len(pooled), 3)
        for i, a in enumerate(pooled):
            K = a @ a.t()
            K.fill_diagonal_(0.0)
            M[i, :, 0] += kernel._HSIC(K, K)
            for j, b in enumerate(pooled):
                L_ = b @ b.t()
                L_.fill_diagonal_(0)
                M[i, j, 1] += kernel._HSIC(K, L_)
                M[i, j, 2] += kernel._HSIC(L_, L_)
        return (M[:, :, 1] / (M[:, :, 0].sqrt() * M[:, :, 2].sqrt())).double().numpy()

    P, pcpu, pwall = timed(
        lambda: R.cka_matrix([f.numpy() for f in pooled], estimator="debiased"), args.repeats * 5
    )
    Pb, bcpu, _ = timed(lambda: R.cka_matrix([f.numpy() for f in pooled]), args.repeats * 5)
    T2, tcpu, twall = timed(torch_cka_loop, args.repeats * 5)
    emit(
        section="cka",
        method="pooled features, matrix only: probe (debiased) vs torch-cka's HSIC loop",
        widths=[int(f.shape[1]) for f in pooled],
        probe_debiased_cpu_s=pcpu,
        probe_biased_cpu_s=bcpu,
        torch_cka_cpu_s=tcpu,
        probe_debiased_speedup_cpu=tcpu / pcpu,
        probe_biased_speedup_cpu=tcpu / bcpu,
        max_abs_diff=float(np.abs(T2 - P).max()),
    )


def _maps(model, x, layers) -> list[torch.Tensor]:
    """The output of each named module for the images x (eval mode, no gradients), in `layers`
    order."""
    out: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, o.detach()))
        for n, m in model.named_modules()
        if n in layers
    ]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return [out[n] for n in layers]


# --- products: HVP, batched HVP, trace, top eigenvalue, side by side -------------------------


def synthetic(name: str, n: int):
    """A seeded random-init built-in model (simplecnn defaults, or resnet depth=20) and n
    seeded normal images with random labels: the cost of a product does not depend on them."""
    import types

    import probe_plugins.resnet as rn
    import probe_plugins.simplecnn as sc

    torch.manual_seed(0)
    inp = types.SimpleNamespace(channels=3)
    model = sc.build(sc.Params(), inp, 10) if name == "cnn" else rn.build(rn.Params(), inp, 10)
    return model.eval(), torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))


def _pieces(v: torch.Tensor, shapes) -> list[torch.Tensor]:
    out, i = [], 0
    for s in shapes:
        out.append(v[i : i + s.numel()].view(s))
        i += s.numel()
    return out


def _summary(section: str, times: dict[str, list[float]], base: str, **kw) -> None:
    med = {k: float(np.median(t)) for k, t in times.items()}
    for k, t in times.items():
        if k == base:
            continue
        r = np.array(t) / np.array(times[base])  # per-round ratio, peer (or variant) / probe
        emit(
            section=section,
            method=k,
            vs=base,
            median_s=med[k],
            base_median_s=med[base],
            ratio_median=float(np.median(r)),
            ratio_min=float(r.min()),
            ratio_max=float(r.max()),
            rounds=len(t),
            **kw,
        )


def _clock(fn) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _singles(model, x, y, op, V, shapes, ph, cl) -> tuple[dict, object]:
    """One HVP of V[0] by each library, its graph (where it keeps one) built here."""
    single: dict = {"probe": lambda: op.matvec(V[0])}
    op.matvec(V[0])  # builds the cached graph
    if ph is not None:
        hm = copy.deepcopy(model).eval()
        H = ph.hessian(hm, F.cross_entropy, data=(x, y), cuda=False)
        single["PyHessian"] = lambda: torch.cat(
            [
                t.reshape(-1)
                for t in ph.hessian_vector_product(H.gradsH, H.params, _pieces(V[0], shapes))
            ]
        )
    if cl is not None:
        cm = copy.deepcopy(model).eval()
        A = cl.HessianLinearOperator(
            cm,
            torch.nn.CrossEntropyLoss(),
            [p for p in cm.parameters() if p.requires_grad],
            [(x, y)],
            check_deterministic=False,
        )
        single["curvlinops"] = lambda: A @ V[0]
    return single, (A if cl is not None else None)


def bench_products(model, x, y, args) -> None:
    """Per round, in rotating order: one HVP (probe, PyHessian, curvlinops), batched HVPs at
    each --widths (probe's matmat, curvlinops' A @ V), the --probes-probe Hutchinson trace
    (graph construction included, the same Rademacher vectors for all three), the top
    eigenvalue (probe's Lanczos at its defaults, PyHessian's power iteration at tol 1e-3).
    Wall seconds, one line per measurement and round, then medians and per-round ratios."""
    ph, why_ph = peer("pyhessian.hessian")
    cl, why_cl = peer("curvlinops")
    for name, why in (("PyHessian", why_ph), ("curvlinops", why_cl)):
        if why:
            emit(section="products", method=name, error=why)
    loss = C.BatchedLoss(model, x, y, batch_size=len(x))
    op = C.HessianOperator(loss)
    shapes = loss.shapes
    gen = torch.Generator().manual_seed(0)
    k_max = max([*args.widths, args.probes])
    V = torch.stack([C.rademacher(op, gen) for _ in range(k_max)])
    single, A = _singles(model, x, y, op, V, shapes, ph, cl)
    ref = single["probe"]()
    for k, f in single.items():
        emit(
            section="products",
            check="hvp agreement",
            method=k,
            rel_diff=float((f() - ref).norm() / ref.norm()),
        )
    t_single = {k: [] for k in single}
    t_batch = {f"probe w={w}": [] for w in args.widths}
    if cl is not None:
        t_batch.update({f"curvlinops w={w}": [] for w in args.widths})
    t_trace: dict[str, list[float]] = {}
    t_eig: dict[str, list[float]] = {}
    for r in range(args.rounds):
        order = list(single.items())
        order = order[r % len(order) :] + order[: r % len(order)]
        for k, f in order:
            t_single[k].append(_clock(f)[1])
        for w in args.widths:
            t_batch[f"probe w={w}"].append(_clock(lambda w=w: C.products(op, V[:w], w))[1] / w)
            if cl is not None:
                t_batch[f"curvlinops w={w}"].append(_clock(lambda w=w: A @ V[:w].T)[1] / w)
        if "trace" in args.parts:
            for k, t, est in _trace_round(model, x, y, V[: args.probes], shapes, ph, cl, args, r):
                t_trace.setdefault(k, []).append(t)
                emit(section="products", part="trace", round=r, method=k, wall_s=t, trace=est)
        if "eigen" in args.parts:
            for k, t, val, n in _eigen_round(model, x, y, ph):
                t_eig.setdefault(k, []).append(t)
                emit(section="products", part="eigen", round=r, method=k, wall_s=t, top=val, hvps=n)
        emit(
            section="products",
            part="hvp",
            round=r,
            **{k: v[-1] for k, v in {**t_single, **t_batch}.items()},
        )
    _summary("hvp", t_single, "probe")
    _summary("batched hvp, s per product", {"probe w=1": t_single["probe"], **t_batch}, "probe w=1")
    if t_trace:
        _summary("trace", t_trace, f"probe w={args.trace_width}", probes=args.probes)
    if t_eig:
        _summary("top eigenvalue", t_eig, "probe Lanczos")


def _trace_round(model, x, y, V, shapes, ph, cl, args, r: int = 0):
    """One timing each of the trace from scratch (graph included), the same vectors V, the
    order rotated by round r (machine drift hits every method alike)."""
    runners = _trace_runners(model, x, y, V, shapes, ph, cl, args)
    runners = runners[r % len(runners) :] + runners[: r % len(runners)]
    out = []
    for name, fn in runners:
        gc.collect()  # PyHessian leaves reference cycles (param.grad's graph) behind
        out.append((name, *reversed(_clock(fn))))
    return out


def _trace_runners(model, x, y, V, shapes, ph, cl, args) -> list:
    """(name, zero-argument function returning the estimate) per library and probe width."""
    out = []
    for w in sorted({1, args.trace_width}):

        def run(w=w):
            o = C.HessianOperator(C.BatchedLoss(model, x, y, batch_size=len(x)))
            return C.hutchinson_trace(o, len(V), seed=0, width=w).trace

        out.append((f"probe w={w}", run))
    if ph is not None:

        def run_ph():
            queue = [p for v in V for p in _pieces((v + 1) / 2, shapes)]  # PyHessian: 0 -> -1
            original = torch.randint_like
            torch.randint_like = lambda p, *a, **k: queue.pop(0).clone().to(p.dtype)
            try:
                h = ph.hessian(
                    copy.deepcopy(model).eval(), F.cross_entropy, data=(x, y), cuda=False
                )
                vals = h.trace(maxIter=len(V), tol=-math.inf)  # never stops early
            finally:
                torch.randint_like = original
            assert len(vals) == len(V), len(vals)
            return float(np.mean(vals))

        out.append(("PyHessian", run_ph))
    if cl is not None:

        def run_cl():
            cm = copy.deepcopy(model).eval()
            A = cl.HessianLinearOperator(
                cm,
                torch.nn.CrossEntropyLoss(),
                [p for p in cm.parameters() if p.requires_grad],
                [(x, y)],
                check_deterministic=False,
            )
            G = V.T.contiguous()  # curvlinops.hutchinson_trace's einsum, on these vectors
            return float(torch.einsum("ij,ij", G, A @ G) / G.shape[1])

        out.append(("curvlinops", run_cl))
    return out


def _eigen_round(model, x, y, ph):
    def run():
        o = C.HessianOperator(C.BatchedLoss(model, x, y, batch_size=len(x)))
        r, _ = C.lanczos(o, 1, smallest=0)
        return float(r.values[0]), r.hvps

    (val, n), t = _clock(run)
    out = [("probe Lanczos", t, val, n)]
    if ph is not None:
        count = {"n": 0}
        original = ph.hessian_vector_product

        def counting(*a, **k):
            count["n"] += 1
            return original(*a, **k)

        def run_ph():
            torch.manual_seed(0)
            h = ph.hessian(copy.deepcopy(model).eval(), F.cross_entropy, data=(x, y), cuda=False)
            return float(h.eigenvalues(maxIter=1000, tol=1e-3, top_n=1)[0][0])

        ph.hessian_vector_product = counting
        try:
            val, t = _clock(run_ph)
        finally:
            ph.hessian_vector_product = original
        out.append(("PyHessian power (tol 1e-3)", t, val, count["n"]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None, help="a probe run directory")
    p.add_argument(
        "--model",
        default=None,
        choices=["cnn", "resnet20"],
        help="instead of --run: a seeded random-init simplecnn (defaults) or resnet depth=20",
    )
    p.add_argument("--rounds", type=int, default=5, help="products section: interleaved rounds")
    p.add_argument("--probes", type=int, default=15, help="products section: trace probes")
    p.add_argument("--widths", default="2,4,8", help="products section: batched product widths")
    p.add_argument("--trace-width", type=int, default=8, help="products section: probe's width")
    p.add_argument("--parts", default="hvp,trace,eigen", help="products section: what to time")
    p.add_argument(
        "--epoch", type=int, default=None, help="checkpoint (default: the last complete epoch)"
    )
    p.add_argument(
        "--n", type=int, default=256, help="images: the first N of the stored analysis batch"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--section", default="all", choices=["eigen", "landscape", "cka", "products", "all"]
    )
    args = p.parse_args()
    args.widths = [int(w) for w in args.widths.split(",") if w]
    args.parts = args.parts.split(",")
    torch.set_num_threads(args.threads)
    if args.model is not None:
        model, x, y = synthetic(args.model, args.n)
        emit(
            section="setup",
            model=args.model,
            n_images=args.n,
            threads=args.threads,
            torch=torch.__version__,
            params=sum(p.numel() for p in model.parameters()),
        )
        bench_products(model, x, y, args)
        return
    if args.run is None:
        p.error("--run or --model is needed")
    from probe.rundir.run import Run

    run = Run(args.run)
    epoch = args.epoch if args.epoch is not None else run.epochs()[-1]
    batch = run.analysis_batch()
    x, y = batch.normalized("cpu")[: args.n].contiguous(), batch.labels[: args.n]
    model = run.model(epoch, "cpu").eval()
    versions = {}
    for name in ("pyhessian", "loss_landscapes", "torch_cka", "scipy"):
        mod, why = peer(name)
        versions[name] = getattr(mod, "__version__", "installed") if mod else why
    emit(
        section="setup",
        run=str(args.run),
        epoch=epoch,
        n_images=len(x),
        threads=args.threads,
        torch=torch.__version__,
        params=sum(p.numel() for p in model.parameters()),
        peers=versions,
    )
    for name, fn in (
        ("eigen", bench_eigen),
        ("landscape", bench_landscape),
        ("cka", bench_cka),
        ("products", bench_products),
    ):
        if args.section in (name, "all"):
            fn(model, x, y, args)


if __name__ == "__main__":
    main()
