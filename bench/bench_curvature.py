"""Speed of probe's curvature and landscape numerics beside the seed notebook's methods.

Run by hand (not a test); prints one JSON line per measurement:

    python bench/bench_curvature.py [--device cuda] [--threads 1] [--section hvp|eigen|grid|ggn|all]
    python bench/bench_curvature.py --section trace --run RUN --epoch E --seeds 20 --products N

- hvp:   one Hessian-vector product (double backward with and without the cached
         first-order graph, forward-over-reverse) against one plain gradient, same batch.
- eigen: Hessian-vector products until the top eigenvalue is within 1e-3 (relative) of
         a tight reference: Lanczos vs power iteration, plus each one's own stopping rule.
- grid:  a 21x21 loss grid: the notebook's loop (train-mode BatchNorm, weights copied in
         per point) vs probe.numerics.landscape.surface vs 441 raw eval-mode forwards, at 64 and
         1024 samples (at 1024 only --rows-1024 rows are timed and scaled to 21 rows).
- ggn:   one Gauss-Newton product (jvp + closed-form softmax Hessian + vjp, cached
         reverse graph and uncached) against one Hessian-vector product (cached
         double backward) and one gradient, at --ggn-batches images.
- trace: on a run's checkpoint (--run, --epoch), the spread over --seeds seeds of
         Hutchinson's and Hutch++'s trace estimates at --products products each, with
         the spectrum facts that bound Hutch++'s gain (top-k eigenvalues, the share of
         ||H||_F^2 they carry).

The model is the notebook's SimpleCNN trained for --train-steps SGD steps on CIFAR-10
(--data; random images if the folder is missing), cached under $PROBE_CACHE.
Timings are the minimum over --repeats interleaved runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe.numerics import curvature as C  # noqa: E402
from probe.numerics import landscape as L  # noqa: E402
from probe.training.model import CIFAR10_MEAN, CIFAR10_STD, simplecnn_spec  # noqa: E402


def emit(**kw) -> None:
    print(
        json.dumps({k: (float(f"{v:.5g}") if isinstance(v, float) else v) for k, v in kw.items()}),
        flush=True,
    )


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def data(args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    folder = Path(args.data)
    if folder.is_dir():
        from probe.datasets.tensors import load_dataset, normalize

        ds = load_dataset("cifar10", str(folder), quiet=True)
        return (
            normalize(ds.train_x[:20000], CIFAR10_MEAN, CIFAR10_STD),
            ds.train_y[:20000],
            normalize(ds.test_x[:1024], CIFAR10_MEAN, CIFAR10_STD),
            ds.test_y[:1024],
        )
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(20000, 3, 32, 32, generator=g),
        torch.randint(0, 10, (20000,), generator=g),
        torch.randn(1024, 3, 32, 32, generator=g),
        torch.randint(0, 10, (1024,), generator=g),
    )


def trained_model(args, train_x, train_y) -> torch.nn.Module:
    """The notebook's SimpleCNN after a few hundred SGD steps: realistic eigenvalue gaps."""
    from probe.datasets.tensors import cache_dir

    path = cache_dir() / f"bench_curvature_{args.train_steps}_{Path(args.data).name}.pt"
    torch.manual_seed(0)
    model = simplecnn_spec().build()
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(args.train_steps):
        idx = torch.randint(0, len(train_x), (128,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(train_x[idx]), train_y[idx]).backward()
        opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


# --- hvp ---------------------------------------------------------------------------------


def interleaved(loss, ops: dict, v: torch.Tensor, repeats: int) -> dict[str, float]:
    """Best seconds of a gradient and of each operator's product, timed in turn `repeats` times.

    Interleaved, so the box's drifting speed hits every entry alike; the first product
    of each operator (which builds its cached graph) is not timed.
    """
    for op in ops.values():
        op.matvec(v)
    times: dict[str, list[float]] = {"gradient": [], **{k: [] for k in ops}}
    for _ in range(repeats):
        times["gradient"].append(best(loss.value_and_grad, 1))
        for k, op in ops.items():
            times[k].append(best(lambda op=op, v=v: op.matvec(v), 1))
    return {k: min(ts) for k, ts in times.items()}


def bench_hvp(model, x, y, args) -> None:
    for n in args.hvp_batches:
        loss = C.BatchedLoss(model, x[:n], y[:n], batch_size=n)
        ops = {
            "double_backward_cached": C.HessianOperator(loss, "double_backward", cache=True),
            "double_backward": C.HessianOperator(loss, "double_backward", cache=False),
            "forward_over_reverse": C.HessianOperator(loss, "forward_over_reverse"),
        }
        v = torch.randn(loss.dim, device=loss.device)
        t = interleaved(loss, ops, v, args.repeats)
        g = t["gradient"]
        emit(
            section="hvp",
            batch=n,
            gradient_s=g,
            **{f"{k}_s": val for k, val in t.items() if k != "gradient"},
            **{f"{k}_x_gradient": val / g for k, val in t.items() if k != "gradient"},
        )


# --- eigen -------------------------------------------------------------------------------


class Recorder:
    """Wraps an operator; after each product records the power estimate v.Hv / v.v
    (what power iteration reports) and the top Rayleigh-Ritz value over all vectors so
    far (what Lanczos reports: its Ritz values are exactly these)."""

    def __init__(self, op, ritz: bool = True, target: float | None = None, patience: int = 8):
        self.op, self.dim, self.dtype, self.device, self.want_ritz = (
            op,
            op.dim,
            op.dtype,
            op.device,
            ritz,
        )
        self.target, self.patience = target, patience
        self.vs, self.hvs, self.rayleigh, self.ritz = [], [], [], []

    @property
    def hvps(self) -> int:
        return self.op.hvps

    def matvec(self, v):
        hv = self.op.matvec(v)
        self.rayleigh.append(float(v @ hv / (v @ v)))
        if not self.want_ritz:
            self._enough(self.rayleigh)
            return hv
        self.vs.append(v.double().cpu())
        self.hvs.append(hv.double().cpu())
        q, r = torch.linalg.qr(torch.stack(self.vs).T)
        hq = torch.linalg.solve_triangular(
            r, torch.stack(self.hvs).T, upper=True, left=False
        )  # H Q
        t = q.T @ hq
        self.ritz.append(float(torch.linalg.eigvalsh(0.5 * (t + t.T))[-1]))
        self._enough(self.ritz)
        return hv

    def _enough(self, trace: list[float]) -> None:
        """Stop the solver once the estimate has stayed within 1e-3 for `patience` products."""
        tail = trace[-self.patience :]
        if (
            self.target
            and len(tail) == self.patience
            and all(abs(t - self.target) <= 1e-3 * abs(self.target) for t in tail)
        ):
            raise Enough


class Enough(Exception):
    pass


def first_within(trace: list[float], ref: float, rel: float) -> int | None:
    """1-based index from which every later estimate stays within rel of ref."""
    ok = [abs(t - ref) <= rel * abs(ref) for t in trace]
    for i in range(len(ok)):
        if all(ok[i:]):
            return i + 1
    return None


def hvps_to_tolerance(loss: C.BatchedLoss, power_max: int, seed: int = 1) -> dict:
    """HVPs each method needs before its top-eigenvalue estimate stays within 1e-3 of a
    tight reference (Lanczos to 1e-8), from the same seeded start vector."""
    ref, _ = C.lanczos(C.HessianOperator(loss), 3, tol=1e-8, residual_tol=1e-5, max_iter=150)
    lam = float(ref.values[0])
    rec = Recorder(C.HessianOperator(loss), target=lam)
    with contextlib.suppress(Enough):
        C.lanczos(rec, 1, tol=1e-12, residual_tol=1e-12, max_iter=60, verify=False, seed=seed)
    rec_p = Recorder(C.HessianOperator(loss), ritz=False, target=lam)
    with contextlib.suppress(Enough):
        C.power_iteration(rec_p, 1, tol=1e-12, residual_tol=1e-12, max_iter=power_max, seed=seed)
    lanczos_n, power_n = first_within(rec.ritz, lam, 1e-3), first_within(rec_p.rayleigh, lam, 1e-3)
    return {
        "reference_top": lam,
        "reference_second": float(ref.values[1]),
        "reference_top3": ref.values.tolist(),
        "gap_ratio": float(ref.values[1]) / lam,
        "reference_residual": float(ref.residuals[0]),
        "hvps_to_rel1e3_lanczos": lanczos_n,
        "hvps_to_rel1e3_power": power_n,
        "ratio": (power_n / lanczos_n) if lanczos_n and power_n else None,
        "power_max": power_max,
    }


def bench_eigen(model, x, y, args) -> None:
    n = args.eigen_batch
    loss = C.BatchedLoss(model, x[:n], y[:n], batch_size=n)
    counts = hvps_to_tolerance(loss, args.power_max)
    emit(section="eigen", batch=n, **counts)
    lam, ref_top3 = (
        counts["reference_top"],
        torch.tensor(counts["reference_top3"], dtype=torch.float64),
    )
    for name, fn in (
        ("lanczos", lambda o: C.lanczos(o, 1, tol=1e-3, residual_tol=1e-2)[0]),
        (
            "power",
            lambda o: C.power_iteration(o, 1, tol=1e-3, residual_tol=1e-2, max_iter=args.power_max),
        ),
    ):
        t0 = time.perf_counter()
        r = fn(C.HessianOperator(loss))
        emit(
            section="eigen",
            batch=n,
            method=name,
            stopping_rule="tol=1e-3,residual_tol=1e-2",
            hvps=r.hvps,
            top=float(r.values[0]),
            rel_error=abs(float(r.values[0]) - lam) / abs(lam),
            residual=float(r.residuals[0]),
            converged=bool(r.converged[0]),
            seconds=time.perf_counter() - t0,
        )
    for name, fn in (
        ("lanczos", lambda o: C.lanczos(o, 3, tol=1e-3, residual_tol=1e-2)[0]),
        (
            "power",
            lambda o: C.power_iteration(o, 3, tol=1e-3, residual_tol=1e-2, max_iter=args.power_max),
        ),
    ):
        r = fn(C.HessianOperator(loss))
        err = ((r.values - ref_top3).abs() / ref_top3.abs()).max()
        emit(
            section="eigen",
            batch=n,
            method=name,
            k=3,
            stopping_rule="tol=1e-3,residual_tol=1e-2",
            hvps=r.hvps,
            values=r.values.tolist(),
            reference=ref_top3.tolist(),
            max_rel_error=float(err),
            converged=r.converged.tolist(),
        )
    # the notebook's method: 10 power iterations, train-mode BatchNorm, one cached graph
    t0 = time.perf_counter()
    nb = notebook_power(model, x[:n], y[:n])
    emit(
        section="eigen",
        batch=n,
        method="notebook_power_10",
        seconds=time.perf_counter() - t0,
        top=nb,
        rel_error=abs(nb - lam) / abs(lam),
        note="train-mode BN (a different loss) and no convergence check",
    )


def notebook_power(model, xb, yb) -> float:
    import copy

    m = copy.deepcopy(model)
    params = [p for p in m.parameters() if p.requires_grad]
    m.train()
    loss = F.cross_entropy(m(xb), yb)
    n = sum(p.numel() for p in params)
    v = torch.randn(n, device=xb.device)
    v /= v.norm()
    eig = 0.0
    for _ in range(10):
        vl, o = [], 0
        for p in params:
            vl.append(v[o : o + p.numel()].view_as(p))
            o += p.numel()
        g = torch.autograd.grad(loss, params, create_graph=True)
        gv = sum((gi * vi).sum() for gi, vi in zip(g, vl, strict=True))
        hv = torch.cat([h.reshape(-1) for h in torch.autograd.grad(gv, params, retain_graph=True)])
        eig = float(v @ hv)
        v = hv / (hv.norm() + 1e-12)
    return eig


def bench_eigen_run(args) -> None:
    """The same count on every selected checkpoint of a real run, on its stored analysis batch."""
    from probe.rundir.run import Run

    run = Run(args.run)
    batch = run.analysis_batch()
    x, y = (
        batch.normalized(args.device)[: args.eigen_batch],
        batch.labels[: args.eigen_batch].to(args.device),
    )
    for epoch in run.select_epochs(args.epochs):
        model = run.model(epoch, device=args.device)
        loss = C.BatchedLoss(model, x, y, batch_size=len(x))
        emit(
            section="eigen-run",
            run=str(args.run),
            epoch=epoch,
            batch=len(x),
            **hvps_to_tolerance(loss, args.power_max),
        )


# --- grid --------------------------------------------------------------------------------


def notebook_grid(model, xb, yb, n_rows: int) -> float:
    """The seed's loop: weights copied into the model per point, train-mode BatchNorm."""
    import copy

    m = copy.deepcopy(model)
    params = [p for p in m.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    flat = torch.cat([p.data.reshape(-1) for p in params]).clone()
    d1 = torch.randn(n, device=flat.device)
    d1 /= d1.norm()
    d2 = torch.randn(n, device=flat.device)
    d2 -= d1 * (d1 @ d2)
    d2 /= d2.norm()

    def setp(f):
        o = 0
        for p in params:
            p.data.copy_(f[o : o + p.numel()].view_as(p))
            o += p.numel()

    grid = np.linspace(-1, 1, 21)
    m.train()
    t0 = time.perf_counter()
    with torch.no_grad():
        for a in grid[:n_rows]:
            for b in grid:
                setp(flat + a * d1 + b * d2)
                F.cross_entropy(m(xb), yb).item()
    return time.perf_counter() - t0


def raw_forward(model, xb, points: int) -> float:
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(points):
            model(xb).sum().item()
    return time.perf_counter() - t0


def bench_grid(model, x, y, args) -> None:
    dirs = L.random_directions(model, seed=0)
    alpha = beta = L.grid((-1.0, 1.0), 21)
    variants = {
        "probe": {},
        "probe_nchw": {"channels_last": False},
        "probe_vmap8": {"points_per_pass": 8},
    }
    for n, rows in ((64, 21), (1024, args.rows_1024)):
        xb, yb = x[:n], y[:n]
        times: dict[str, list[float]] = {
            "notebook": [],
            "raw_forward": [],
            **{k: [] for k in variants},
        }
        for _ in range(args.repeats if n == 64 else 1):
            times["notebook"].append(notebook_grid(model, xb, yb, rows))
            times["raw_forward"].append(raw_forward(model, xb, rows * 21))
            for k, kw in variants.items():
                if n > 64 and k == "probe_vmap8":
                    continue
                t0 = time.perf_counter()
                L.surface_rows(
                    model, xb, yb, dirs, alpha, beta, list(range(rows)), batch_size=n, **kw
                )
                times[k].append(time.perf_counter() - t0)
        scale = 21 / rows
        t = {k: min(v) * scale for k, v in times.items() if v}
        fastest = min((k for k in variants if k in t), key=t.get)
        emit(
            section="grid",
            batch=n,
            rows_timed=rows,
            **{f"{k}_21x21_s": v for k, v in t.items()},
            fastest=fastest,
            speedup_vs_notebook=t["notebook"] / t[fastest],
            vs_raw_forward=t[fastest] / t["raw_forward"],
        )


# --- ggn ---------------------------------------------------------------------------------


def bench_ggn(model, x, y, args) -> None:
    """GGN product vs Hessian-vector product, interleaved, on the same batch and vector."""
    for n in args.ggn_batches:
        loss = C.BatchedLoss(model, x[:n], y[:n], batch_size=n)
        ops = {
            "hvp_cached": C.hessian_operator(loss, "double_backward", cache=True),
            "ggn_cached": C.ggn_operator(loss, cache=True),
            "ggn_uncached": C.ggn_operator(loss, cache=False),
        }
        v = torch.randn(loss.dim, device=loss.device, generator=torch.Generator().manual_seed(0))
        t = interleaved(loss, ops, v, args.repeats)
        gv, hv = ops["ggn_cached"].matvec(v), ops["hvp_cached"].matvec(v)
        emit(
            section="ggn",
            batch=n,
            **{f"{k}_s": val for k, val in t.items()},
            ggn_cached_x_hvp=t["ggn_cached"] / t["hvp_cached"],
            ggn_uncached_x_hvp=t["ggn_uncached"] / t["hvp_cached"],
            hvp_x_gradient=t["hvp_cached"] / t["gradient"],
            ggn_cached_x_gradient=t["ggn_cached"] / t["gradient"],
            vGv=float(v @ gv),
            vHv=float(v @ hv),
            repeats=args.repeats,
        )
        del ops


# --- trace -------------------------------------------------------------------------------


def bench_trace(args) -> None:
    """Hutchinson vs Hutch++ at an equal number of products on a real checkpoint, over seeds."""
    from probe.rundir.run import Run

    run = Run(args.run)
    batch = run.analysis_batch()
    x, y = (
        batch.normalized(args.device)[: args.trace_batch],
        batch.labels[: args.trace_batch].to(args.device),
    )
    model = run.model(args.epoch, device=args.device)
    loss = C.BatchedLoss(model, x, y, batch_size=len(x))
    op = C.make_operator(args.operator, loss)
    m, k = args.products, args.products // 3
    t0 = time.perf_counter()
    # Hutchinson: keep every single sample (v.Hv, and ||Hv||^2, whose mean estimates ||H||_F^2)
    singles, frob = [], []
    for seed in range(args.seeds):
        gen = torch.Generator().manual_seed(seed)
        row = []
        for _ in range(m):
            v = C.rademacher(op, gen)
            hv = op.matvec(v)
            row.append(float(v @ hv))
            frob.append(float(hv @ hv))
        singles.append(row)
    hut = np.array(singles).mean(1)
    hpp_res = [
        C.hutchpp_trace(op.matvec, op.dim, m, seed, dtype=op.dtype, device=op.device)
        for seed in range(args.seeds)
    ]
    hpp = np.array([r.trace for r in hpp_res])
    seconds = time.perf_counter() - t0
    # the spectrum: both ends from one Lanczos run, 2k pairs asked (k = the sketch size)
    top, bottom = C.lanczos(
        C.make_operator(args.operator, loss),
        k,
        smallest=k,
        tol=1e-4,
        residual_tol=1e-2,
        max_iter=args.lanczos_steps,
        verify=False,
    )
    ev = torch.cat([top.values, bottom.values]).abs().sort(descending=True).values[:k]
    fro2 = float(np.mean(frob))
    share = float((ev**2).sum()) / fro2
    var_single = float(np.var(np.array(singles).ravel(), ddof=1))
    emit(
        section="trace",
        run=str(args.run),
        epoch=args.epoch,
        operator=args.operator,
        batch=len(x),
        dim=op.dim,
        products=m,
        sketch=k,
        seeds=args.seeds,
        hutchinson_mean=float(hut.mean()),
        hutchpp_mean=float(hpp.mean()),
        hutchinson_var=float(np.var(hut, ddof=1)),
        hutchpp_var=float(np.var(hpp, ddof=1)),
        var_ratio=float(np.var(hut, ddof=1) / np.var(hpp, ddof=1)),
        hutchinson_var_from_all_samples=var_single / m,
        var_ratio_from_all_samples=var_single / m / float(np.var(hpp, ddof=1)),
        hutchpp_stated_stderr_rms=float(np.sqrt(np.mean([r.stderr**2 for r in hpp_res]))),
        frobenius2=fro2,
        top_k_abs_eigenvalues=ev.tolist()[:10],
        top_k_frobenius_share=share,
        theory_ratio=1 / (3 * max(1 - share, 1e-12)),
        lanczos_hvps=top.hvps,
        top_converged=int(top.converged.sum()),
        seconds=seconds,
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    p.add_argument(
        "--section", default="all", choices=["hvp", "eigen", "grid", "ggn", "trace", "all"]
    )
    p.add_argument("--data", default="/work/shared/data/cifar10")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hvp-batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--eigen-batch", type=int, default=64)
    p.add_argument("--power-max", type=int, default=300)
    p.add_argument("--rows-1024", type=int, default=1)
    p.add_argument("--ggn-batches", type=int, nargs="+", default=[256, 1024])
    p.add_argument(
        "--run",
        help="eigen section (or --section trace) on this run's checkpoints and analysis batch",
    )
    p.add_argument("--epoch", type=int, default=None, help="with --section trace: the checkpoint")
    p.add_argument(
        "--seeds", type=int, default=20, help="with --section trace: seeds per estimator"
    )
    p.add_argument(
        "--products", type=int, default=30, help="with --section trace: products per estimate"
    )
    p.add_argument(
        "--trace-batch",
        type=int,
        default=256,
        help="with --section trace: images of the analysis batch",
    )
    p.add_argument(
        "--operator", default="hessian", choices=list(C.OPERATORS), help="with --section trace"
    )
    p.add_argument(
        "--lanczos-steps", type=int, default=80, help="with --section trace: spectrum steps"
    )
    p.add_argument(
        "--epochs", default="all", help="with --run: which epochs (probe analyze's --epochs syntax)"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.section == "trace":
        if not args.run or args.epoch is None:
            p.error("--section trace needs --run and --epoch")
        bench_trace(args)
        return
    if args.run:
        bench_eigen_run(args)
        return
    train_x, train_y, x, y = data(args)
    model = trained_model(args, train_x, train_y).to(args.device)
    x, y = x.to(args.device), y.to(args.device)
    emit(
        section="setup",
        device=args.device,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        params=sum(p.numel() for p in model.parameters()),
        train_steps=args.train_steps,
        data=args.data if Path(args.data).is_dir() else "random",
    )
    for name, fn in (
        ("hvp", bench_hvp),
        ("eigen", bench_eigen),
        ("grid", bench_grid),
        ("ggn", bench_ggn),
    ):
        if args.section in (name, "all"):
            fn(model, x, y, args)


if __name__ == "__main__":
    main()
