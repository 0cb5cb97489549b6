"""Run independent tasks in parallel: local worker processes, or a Dask cluster.

A task is a picklable function plus its arguments. Executors know nothing about
training: a sweep sends one task per grid point, and the same executor can carry
loss-landscape grid rows or per-epoch Hessian pieces:

    with make_executor(workers=4) as executor:          # or scheduler=..., dask_workers=...
        for out in executor.run(Task(f"row-{i}", loss_row, (run_dir, i)) for i in range(n)):
            rows[out.key] = out.value if out.ok else fail(out.error)

`fn` must be importable by name in the worker (a module-level function), and its
arguments and return value picklable.

Every task runs inside `run_task`, which turns an exception into a failed
`Outcome` (a one-line message plus the traceback), so one failing task never
stops the others and exceptions never have to be pickled back. A worker process
that dies outright (killed for memory, a segfault) is found out too: the tasks it
may have been running are re-run alone, and only the one that kills its worker
again is reported as failed.

Local workers divide the machine's cores between them (torch and BLAS threads), so
N parallel trainings do not fight over cores. Torch is never imported here: the
CLI has to start fast, and each worker imports it only when its task needs it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from probe.errors import ProbeError, UsageError

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class Task:
    """One unit of work: `fn(*args, **kwargs)`; `key` names it in outcomes and logs."""

    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What became of a task: its return value, or a one-line error and the traceback."""

    key: str
    ok: bool
    value: Any = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0


def error_line(exc: BaseException) -> str:
    """A one-line description: a ProbeError's own message, else `Type: message`."""
    if isinstance(exc, ProbeError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:500]


def run_task(task: Task) -> Outcome:
    """Call a task and capture the result; runs inside the worker."""
    start = time.perf_counter()
    try:
        value = task.fn(*task.args, **task.kwargs)
    except Exception as exc:
        return Outcome(
            task.key,
            False,
            error=error_line(exc),
            traceback=traceback.format_exc(),
            seconds=time.perf_counter() - start,
        )
    return Outcome(task.key, True, value=value, seconds=time.perf_counter() - start)


def set_threads(threads: int) -> None:
    """Limit this process to `threads` compute threads.

    The environment variables cover torch imported later (it reads OMP_NUM_THREADS
    when it starts) and BLAS; torch already imported is told directly.
    """
    import sys

    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _run_with_threads(task: Task, threads: int | None) -> Outcome:
    if threads:
        set_threads(threads)
    return run_task(task)


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Half the cores, at most 4: small CNNs train better in parallel than wide."""
    return max(1, min(4, cpu_count() // 2))


class Executor:
    """Runs tasks; `run` yields an Outcome per task, in the order they finish."""

    name = "executor"
    workers = 1

    def run(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineExecutor(Executor):
    """Runs tasks one after another in this process (debugging, tests, `--workers 0`)."""

    name = "inline"

    def run(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        for task in tasks:
            yield run_task(task)

    def describe(self) -> str:
        return "in this process"


class LocalExecutor(Executor):
    """`workers` spawned processes on this machine, each with an equal share of the cores.

    Processes are spawned, not forked: forking a process that has started torch's
    or OpenMP's threads can deadlock the child.
    """

    name = "local"
    POLL_S = 0.2

    def __init__(self, workers: int | None = None, threads_per_worker: int | None = None):
        self.workers = workers or default_workers()
        self.threads = threads_per_worker or max(1, cpu_count() // self.workers)
        self._ctx = multiprocessing.get_context("spawn")

    def describe(self) -> str:
        return (
            f"{self.workers} local worker process{'es' if self.workers > 1 else ''}, "
            f"{self.threads} thread{'s' if self.threads > 1 else ''} each"
        )

    def _new_pool(self, workers: int) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            workers, mp_context=self._ctx, initializer=set_threads, initargs=(self.threads,)
        )

    def run(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        pending = list(tasks)
        breaks: dict[str, int] = {}  # pool breakages each task was caught in
        while pending:
            suspects: list[Task] = []
            with _closing(self._new_pool(min(self.workers, len(pending)))) as pool:
                futures = {pool.submit(run_task, t): t for t in pending}
                pending = []
                running: set[cf.Future] = set()
                while futures:
                    done, _ = cf.wait(futures, timeout=self.POLL_S, return_when=cf.FIRST_COMPLETED)
                    if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                        # a dead worker fails every unfinished task: sort them all
                        done = set(futures)
                        cf.wait(done)
                    for f in done:
                        task = futures.pop(f)
                        exc = f.exception()
                        if exc is None:
                            yield f.result()
                            continue
                        if not isinstance(
                            exc, BrokenProcessPool
                        ):  # e.g. an argument that cannot be pickled
                            yield Outcome(
                                task.key, False, error=error_line(exc), traceback=_format(exc)
                            )
                            continue
                        breaks[task.key] = breaks.get(task.key, 0) + 1
                        # Whatever was on a worker may be the culprit; the rest just goes again.
                        (suspects if f in running or breaks[task.key] > 1 else pending).append(task)
                    running = {f for f in futures if f.running()}
            # Each suspect runs alone: only a task that kills its worker again fails.
            for task in suspects:
                yield self._run_alone(task)

    def _run_alone(self, task: Task) -> Outcome:
        start = time.perf_counter()
        with _closing(self._new_pool(1)) as pool:
            try:
                return pool.submit(run_task, task).result()
            except BrokenProcessPool:
                return Outcome(
                    task.key,
                    False,
                    error="its worker process died (killed for memory, or crashed)",
                    seconds=time.perf_counter() - start,
                )


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


@contextlib.contextmanager
def _closing(pool: cf.ProcessPoolExecutor) -> Iterator[cf.ProcessPoolExecutor]:
    """Shut a pool down; when leaving early (Ctrl-C, an error), stop its workers too.

    Otherwise an abandoned training would go on writing its run directory.
    """
    try:
        yield pool
    except BaseException:
        processes = list(getattr(pool, "_processes", {}).values())  # no public way to stop them
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive():
                p.terminate()
        for p in processes:
            p.join(timeout=5)
        raise
    else:
        pool.shutdown(wait=True, cancel_futures=True)


def _s(n: int) -> str:
    """The plural ending of a count (`1 worker`, `2 workers`)."""
    return "s" if n > 1 else ""


class DaskExecutor(Executor):
    """Tasks on a Dask distributed cluster: an existing scheduler, or a local one.

    Run directories must be on a filesystem every worker shares; the sweep passes
    absolute paths. On a cluster of your own, thread limits are the cluster's
    business (Dask's nanny already sets OMP_NUM_THREADS=1 for its workers); on the
    local cluster started here each worker gets an equal share of the cores.
    """

    name = "dask"

    def __init__(self, scheduler: str | None = None, n_workers: int | None = None):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            opt = "--scheduler" if scheduler else "--dask-workers"
            raise UsageError(opt, "needs Dask: pip install 'probe-cnn[dask]'") from None
        self.scheduler = scheduler
        self._cluster = None
        self.threads: int | None = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise UsageError(
                    "--scheduler",
                    f"cannot reach the Dask scheduler at {scheduler} ({msg[:200]}); "
                    "nothing was started",
                ) from None
            self.workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        else:
            self.workers = n_workers or default_workers()
            self.threads = max(1, cpu_count() // self.workers)
            self._cluster = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                silence_logs=40,
            )
            self.client = Client(self._cluster, set_as_default=False)

    def describe(self) -> str:
        if self.scheduler:
            return f"Dask scheduler {self.scheduler} ({self.workers} worker{_s(self.workers)} now)"
        return (
            f"local Dask cluster, {self.workers} worker process{'es' if self.workers > 1 else ''}, "
            f"{self.threads} thread{_s(self.threads or 0)} each"
        )

    def run(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        from distributed import as_completed

        tasks = list(tasks)
        if not tasks:
            return
        futures = {}
        for t in tasks:
            f = self.client.submit(
                _run_with_threads,
                t,
                self.threads,
                pure=False,
                key=f"probe-{t.key}-{os.urandom(4).hex()}",
            )
            futures[f] = t
        try:
            for fut in as_completed(list(futures), loop=self.client.loop):
                t = futures[fut]
                try:
                    yield fut.result()
                except Exception as exc:  # KilledWorker, lost connection, ...
                    yield Outcome(
                        t.key, False, error=f"Dask: {error_line(exc)}", traceback=_format(exc)
                    )
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def make_executor(
    workers: int | None = None, scheduler: str | None = None, dask_workers: int | None = None
) -> Executor:
    """The executor the CLI options ask for (local processes unless Dask is named)."""
    if scheduler and dask_workers:
        raise UsageError(
            "--dask-workers",
            "cannot be combined with --scheduler (that cluster has its own workers)",
        )
    if (scheduler or dask_workers) and workers is not None:
        raise UsageError(
            "--workers",
            "is for local processes; with Dask, use --dask-workers or the cluster's own workers",
        )
    if scheduler or dask_workers:
        return DaskExecutor(scheduler=scheduler, n_workers=dask_workers)
    if workers == 0:
        return InlineExecutor()
    return LocalExecutor(workers)
