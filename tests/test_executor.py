"""The executors: any picklable function, failures isolated, cores divided, Dask alike.

Tasks are built-in functions so that every worker process (spawned, or started
by a Dask nanny) can unpickle them without importing the tests.
"""

from __future__ import annotations

import math
import os
import socket
import time

import pytest

from probe.analysis import executor as ex
from probe.analysis.executor import DaskExecutor, InlineExecutor, LocalExecutor, Task, make_executor
from probe.errors import UsageError


def tasks() -> list[Task]:
    return [
        Task("sqrt-16", math.sqrt, (16,)),
        Task("hex", int, ("ff",), {"base": 16}),
        Task("bad", math.sqrt, (-1,)),
        Task("threads", os.getenv, ("OMP_NUM_THREADS",)),
    ]


def by_key(outcomes) -> dict:
    return {o.key: o for o in outcomes}


def test_local_executor_runs_tasks_and_isolates_errors():
    with LocalExecutor(workers=2, threads_per_worker=3) as e:
        out = by_key(e.run(tasks()))
    assert out["sqrt-16"].ok and out["sqrt-16"].value == 4.0
    assert out["hex"].value == 255
    assert not out["bad"].ok
    assert out["bad"].error == "ValueError: math domain error"
    assert "Traceback" in out["bad"].traceback
    assert out["threads"].value == "3"  # each worker's share of the cores


def test_threads_are_divided_between_workers(monkeypatch):
    monkeypatch.setattr(ex, "cpu_count", lambda: 8)
    assert LocalExecutor(workers=4).threads == 2
    assert LocalExecutor(workers=16).threads == 1
    assert "2 local worker processes, 4 threads each" == LocalExecutor(workers=2).describe()


def test_a_dying_worker_fails_only_its_task():
    work = [Task(f"sqrt-{i}", math.sqrt, (i,)) for i in range(6)]
    work.insert(2, Task("crash", os._exit, (3,)))
    with LocalExecutor(workers=2) as e:
        out = by_key(e.run(work))
    assert set(out) == {t.key for t in work}
    assert not out["crash"].ok and "worker process died" in out["crash"].error
    assert all(out[f"sqrt-{i}"].ok and out[f"sqrt-{i}"].value == math.sqrt(i) for i in range(6))


def test_unpicklable_argument_is_a_failed_outcome():
    with LocalExecutor(workers=1) as e:
        (out,) = e.run([Task("lambda", print, (lambda: None,))])
    assert not out.ok and "pickle" in out.error.lower()


def test_inline_executor():
    out = by_key(InlineExecutor().run(tasks()))
    assert out["sqrt-16"].value == 4.0 and not out["bad"].ok


def test_error_line_is_one_line():
    assert ex.error_line(RuntimeError("first\nsecond")) == "RuntimeError: first"
    assert ex.error_line(UsageError("--lr", "must be > 0")) == "--lr: must be > 0"
    assert ex.error_line(KeyError()) == "KeyError"


def test_option_conflicts():
    with pytest.raises(UsageError, match="--dask-workers"):
        make_executor(scheduler="tcp://x:1", dask_workers=2)
    with pytest.raises(UsageError, match="--workers"):
        make_executor(workers=2, dask_workers=2)
    assert isinstance(make_executor(workers=0), InlineExecutor)
    assert isinstance(make_executor(workers=2), LocalExecutor)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_one_line(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(ex, "CONNECT_TIMEOUT_S", 2)
    address = f"tcp://127.0.0.1:{_closed_port()}"
    start = time.perf_counter()
    with pytest.raises(UsageError) as info:
        make_executor(scheduler=address)
    msg = str(info.value)
    assert msg.startswith("--scheduler: cannot reach the Dask scheduler at " + address)
    assert "\n" not in msg
    assert time.perf_counter() - start < 20


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_outcomes():
    pytest.importorskip("distributed")
    with LocalExecutor(workers=2) as e:
        local = by_key(e.run(tasks()))
    with DaskExecutor(n_workers=2) as e:
        assert "local Dask cluster, 2 worker processes" in e.describe()
        dask = by_key(e.run(tasks()))
    assert set(dask) == set(local)
    for key in local:
        assert (dask[key].ok, dask[key].value, dask[key].error) == (
            local[key].ok,
            local[key].value,
            local[key].error,
        )
