"""Helpers for the reliability tests: a tiny image folder, a process that forks `probe`, run checks.

Crash tests need many real processes to SIGKILL. Starting Python and importing torch
costs seconds per process on a loaded 2-core machine, so a *zygote* imports probe and
torch once and forks a child per command: each child is a real, separate process
running the real `probe` command line (`probe.cli.cli`), and is killed with a real
SIGKILL, but starts in milliseconds. The zygote itself never runs torch code, so
forking it is safe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import probe
from probe.testing import make_image_folder

# A run of 3 epochs on 80 training images: a few hundred milliseconds of training per run.
TINY_ARGS = [
    "--epochs",
    "3",
    "--batch-size",
    "16",
    "--val-batch-size",
    "32",
    "--subset-train-size",
    "0",
    "--base-width",
    "4",
    "--probe-set-size",
    "10",
    "--analysis-batch-size",
    "8",
    "--example-records",
    "10",
    "--optimizer",
    "SGD_mom",
    "--lr",
    "0.05",
    "--seed",
    "0",
    "--device",
    "cpu",
    "--quiet",
]

CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def make_png_folder(
    root: Path, n_train: int = 8, n_test: int = 3, classes: int = 10, seed: int = 0
) -> Path:
    """A CIFAR-shaped folder dataset of random PNGs: root/{train,test}/<class>/NNNN.png."""
    return make_image_folder(root, n_train=n_train, n_test=n_test, classes=classes, seed=seed)


_ZYGOTE = (
    r"""
import json, os, resource, signal, sys
os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
import torch
torch.set_num_threads(1)
import torch._dynamo, torch.optim  # the first optimizer imports dynamo: seconds, so once here
import h5py, safetensors.torch, probe.cli, probe.training.loop, """
    r"""probe.analysis.runner, probe.analysis.context  # noqa: F401
out = sys.stdout
out.write("ready\n"); out.flush()
for line in sys.stdin:
    req = json.loads(line)
    if "wait" in req:
        _, status = os.waitpid(req["wait"], 0)
        out.write(json.dumps({"pid": req["wait"], "status": status}) + "\n"); out.flush()
        continue
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            sys.stdin.close()
            os.environ.update(req.get("env", {}))
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1); os.dup2(fd, 2)
            sys.stdout = open(1, "w", closefd=False); sys.stderr = open(2, "w", closefd=False)
            if req.get("fsize"):
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversize write raises """
    r"""EFBIG instead
                resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
            exec(req.get("prelude", ""), {})
            try:
                probe.cli.cli.main(req["args"], prog_name="probe", standalone_mode=True)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    out.write(json.dumps({"pid": pid}) + "\n"); out.flush()
"""
)


class Child:
    """One forked `probe` command: its pid, and (after `wait`) how it ended and what it printed."""

    def __init__(self, zygote: Zygote, pid: int, log: Path):
        self.zygote, self.pid, self.log = zygote, pid, log
        self.status: int | None = None

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = 120) -> Child:
        if self.status is None:
            msg = self.zygote._ask({"wait": self.pid}, timeout)
            assert msg["pid"] == self.pid, msg
            self.status = msg["status"]
        return self

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        # a zombie (dead, not yet reaped by the zygote) still accepts signal 0
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    @property
    def killed(self) -> bool:
        return os.WIFSIGNALED(self.status) and os.WTERMSIG(self.status) == 9

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None

    @property
    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


class Zygote:
    """A Python process with torch and probe imported that forks `probe` children on request."""

    def __init__(self, logs: Path, cache: Path):
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.n = 0
        env = {**os.environ, **CHILD_ENV, "PROBE_CACHE": str(cache)}
        env.pop("PROBE_TEST_DELAY_WRITES", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            bufsize=1,
        )
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"zygote did not start: {line!r}"

    def _read(self, timeout: float) -> dict[str, Any]:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("the probe child did not finish in time")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the zygote died")
        return json.loads(line)

    def _ask(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def start(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        fsize: int | None = None,
        prelude: str = "",
    ) -> Child:
        """Fork a child running `probe ARGS`; several may run at once.
        `prelude`: Python run first."""
        self.n += 1
        log = self.logs / f"child-{self.n:03d}.log"
        req = {"args": args, "env": env or {}, "log": str(log), "fsize": fsize, "prelude": prelude}
        return Child(self, self._ask(req, 30)["pid"], log)

    def run(self, args: list[str], **kw: Any) -> Child:
        return self.start(args, **kw).wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for(predicate, timeout: float = 30, poll: float = 0.002) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` passes (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(poll)
    return False


def temp_files(run_dir: Path) -> list[Path]:
    """Temporary files of atomic writes under `run_dir` (`.<name>.<random>.tmp`)."""
    return sorted(p for p in run_dir.rglob(".*") if p.name.endswith((".tmp", ".old")))


def check_run_files(run_dir: Path) -> list[int]:
    """Assert every file of a run directory is complete and readable; returns the complete epochs.

    Temporary files are not part of the run and are skipped, and so are analysis
    results and logs; everything else must parse: JSON, every metrics line, every
    checkpoint and dump (checksums verified, every dataset read), the data batches.
    """
    import h5py
    from safetensors.torch import load_file

    from probe.rundir import activations, checkpoint
    from probe.rundir.run import Run

    run = Run(run_dir)
    assert isinstance(run.config["train"], dict)
    epochs = run.epochs()
    for p in sorted(run_dir.rglob("*")):
        parts = p.relative_to(run_dir).parts
        if (
            p.is_dir()
            or any(part.startswith(".") for part in parts)
            or parts[0] in ("analyses", "logs", "report")
        ):
            continue
        rel = p.relative_to(run_dir).as_posix()
        if rel == "config.json":
            json.loads(p.read_text())
        elif rel == "metrics.jsonl":
            rows = [
                json.loads(line) for line in p.read_text().splitlines()
            ]  # no torn line: written whole
            assert [r["epoch"] for r in rows] == sorted(r["epoch"] for r in rows)
            assert {r["epoch"] for r in rows} <= set(epochs), (rows, epochs)
        elif rel.startswith("checkpoints/"):
            ckpt = checkpoint.load(p)
            ckpt.build_model()
        elif rel.startswith("activations/"):
            activations.verify(p)
            with h5py.File(p, "r") as f:
                assert f.attrs["format"] == activations.FORMAT
                names: list[str] = []
                f.visit(lambda n, names=names: names.append(n))
                for n in names:
                    if isinstance(f[n], h5py.Dataset):
                        f[n][()]
        elif rel.startswith("data/"):
            assert set(load_file(str(p))) == {"images", "labels", "indices"}
        elif rel.startswith("predictions/"):
            assert set(load_file(str(p))) == {"logits"}
        else:
            raise AssertionError(f"unexpected file in a run directory: {rel}")
    for e in epochs:  # the dump and logits are written before the checkpoint that completes it
        assert run.activations_path(e).is_file(), e
        assert (
            not run.has_examples() or (run_dir / f"predictions/epoch_{e:04d}.safetensors").is_file()
        )
    return epochs


def checkpoint_digests(run_dir: Path) -> dict[int, str]:
    """content_sha256 of every checkpoint: equal digests mean bitwise equal tensors and metadata."""
    from probe.rundir import checkpoint
    from probe.rundir.run import Run

    run = Run(run_dir)
    return {
        e: checkpoint.read_metadata(run.checkpoint_path(e))["content_sha256"] for e in run.epochs()
    }


def final_state(run_dir: Path) -> dict[str, Any]:
    """The final checkpoint's tensors (model, optimizer and RNG states)."""
    from safetensors.torch import load_file

    from probe.rundir.run import Run

    run = Run(run_dir)
    return load_file(str(run.checkpoint_path(run.epochs()[-1])))


def assert_bitwise_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    import torch

    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(
            a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8)
        ), k


def one_error_line(text: str) -> str:
    """The output of a failed command: exactly one non-empty line, never a traceback."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text, text
    assert len(lines) == 1, text
    return lines[0]


# --- analyses for the tests -----------------------------------------------------------------------


def _peek(ctx: Any) -> None:
    """Per epoch: rebuild the model and read every recorded activation (a
    damaged input fails it)."""
    model = ctx.model()
    arrays = {layer.replace(".", "_"): ctx.activations(layer) for layer in ctx.layers()}
    arrays["logits"] = ctx.activations("logits", kind="logits")
    ctx.out.arrays("peek", **arrays)
    ctx.out.scalar("params", sum(p.numel() for p in model.parameters()))
    ctx.out.scalar("mean_logit", float(arrays["logits"].mean()))


def _census(ctx: Any) -> None:
    """Over all selected epochs: everything it sees must be finished (checkpoint,
    dump, metrics line)."""
    rows = ctx.metrics()
    for e in ctx.epochs:
        ctx.checkpoint(e)
        ctx.activations("logits", e, kind="logits")
    assert {r["epoch"] for r in rows} <= set(ctx.all_epochs()), (rows, ctx.all_epochs())
    ctx.out.json("census", {"epochs": ctx.epochs, "metric_epochs": [r["epoch"] for r in rows]})
    ctx.out.scalar("epochs", len(ctx.epochs))


class TestPlugins:
    """`peek` and `census`, registered in-process like any plugin (pytest must not collect this)."""

    __test__ = False

    def __init__(self, *extra: Any):
        self.extra = extra

    @probe.hookimpl
    def register_analyses(self, register: Any) -> None:
        from probe import Analysis

        register(
            Analysis(
                name="peek",
                run=_peek,
                needs={"model", "activations"},
                summary="Rebuild each epoch's model and read its activations.",
            )
        )
        register(
            Analysis(
                name="census",
                run=_census,
                scope="run",
                needs={"checkpoint", "activations", "metrics"},
                summary="Check every selected epoch is complete.",
            )
        )
        for analysis in self.extra:
            register(analysis)


def install_test_plugins(*extra: Any) -> Any:
    """A registry with the built-in `curves`, `peek`, `census` and `extra`
    analyses, made process-wide."""
    import probe_plugins.curves
    from probe.contract.registry import PluginInfo, Registry, reset_registry

    reg = Registry()
    reg.register(probe_plugins.curves, PluginInfo("curves", "probe_plugins.curves"))
    reg.register(TestPlugins(*extra), PluginInfo("reliability-tests", "reliability_helpers"))
    reset_registry(reg)
    return reg


def installed_with(plugin: Any, name: str, dist: str) -> Any:
    """The installed entry points plus `plugin` (from distribution `dist`), as if its package were
    installed, made process-wide."""
    from probe.contract.registry import PluginInfo, load_registry, reset_registry

    reg = load_registry()
    reg.register(plugin, PluginInfo(name, f"{dist.replace('-', '_')}:plugin", dist, "1.0"))
    reset_registry(reg)
    return reg


PLUGIN_PRELUDE = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
    "import reliability_helpers; reliability_helpers.install_test_plugins()\n"
)


# --- in-process runs and commands -----------------------------------------------------------------

SMALL = dict(
    epochs=2,
    subset_train_size=0,
    batch_size=16,
    val_batch_size=32,
    base_width=4,
    probe_set_size=10,
    analysis_batch_size=8,
    lr=0.05,
    optimizer="SGD_mom",
    seed=0,
    device="cpu",
)


def copy_of(template: Path, tmp_path: Path) -> Path:
    """A private copy of a module-scoped template run, for a test that damages or analyses it."""
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(template, dst)
    return dst


def train_small(run_dir: Path, **overrides: Any) -> Path:
    """A 2-epoch width-4 run on 80 synthetic images, in this process."""
    from probe.testing import synthetic_dataset
    from probe.training.config import TrainConfig
    from probe.training.loop import train

    cfg = TrainConfig(**{**SMALL, **overrides})
    return train(
        run_dir, cfg, quiet=True, dataset=synthetic_dataset(n_train=80, n_test=40, seed=cfg.seed)
    )


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Torch on one thread in this process: on a loaded 2-core machine more threads only fight."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def probe_cli(*args: str) -> Any:
    """Run `probe ARGS` in this process (click's CliRunner); the result has
    exit_code, stdout, stderr."""
    from click.testing import CliRunner

    from probe.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
