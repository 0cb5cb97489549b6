"""A job in a forked child process, killed with its process group past a timeout.

`probe analyze --timeout` runs each job this way: the child computes the job (the `work` it is
given) and sends its `Outcome` back as JSON over a pipe; past the timeout the child's whole
process group is killed (status "timeout"), and a child that dies without an answer is a
failure ("the analysis process died"), never a crash of `probe analyze`. What a killed child
left half-written (its temporary result folder) is removed, and a failure record written.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probe.analysis.job import Job
from probe.analysis.outcome import Outcome
from probe.analysis.records import record_failure

__all__ = ["run_in_child"]


def run_in_child(job: Job, work: Callable[[], Outcome], timeout: float) -> Outcome:
    """Fork a child that runs `work` (computing `job`); kill its process group past `timeout`.

    fork, not spawn: the analysis (often a closure or a module-level function of a
    plugin) needs no pickling, and the child starts in milliseconds with torch
    already imported. The outcome comes back as JSON over a pipe.
    """
    mp = multiprocessing.get_context("fork")
    recv, send = mp.Pipe(duplex=False)
    # not a daemon: a daemonic process may not start processes, and an analysis may
    proc = mp.Process(target=_child_main, args=(send, work))
    t0 = time.perf_counter()
    proc.start()
    send.close()
    data = None
    try:
        answered = recv.poll(timeout)
        if answered:
            try:
                data = recv.recv_bytes()
            except EOFError:  # the child died without an answer
                pass
            proc.join(5)
    finally:
        if proc.is_alive():
            _kill_group(proc.pid)
            proc.join()
        recv.close()
    seconds = time.perf_counter() - t0
    if data is not None:
        d = json.loads(data)
        return Outcome(**{**d, "path": Path(d["path"]) if d["path"] else None})
    target = job.target
    for tmp in target.parent.glob(f".{target.name}.{proc.pid}.*"):  # its unfinished result folder
        shutil.rmtree(tmp, ignore_errors=True)
    if not answered:
        outcome = Outcome(
            job.name, job.epoch, "timeout", seconds, None, f"timed out after {timeout:g} s (killed)"
        )
    else:
        code = proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        outcome = Outcome(
            job.name, job.epoch, "failed", seconds, None, f"the analysis process died ({how})"
        )
    record_failure(job, outcome)
    return outcome


def _child_main(conn: Any, work: Callable[[], Outcome]) -> None:
    try:
        os.setpgid(0, 0)  # its own process group, so whatever it starts is killed with it
    except OSError:
        pass
    outcome = work()
    d = dataclasses.asdict(outcome)
    d["path"] = str(outcome.path) if outcome.path else None
    conn.send_bytes(json.dumps(d).encode())
    conn.close()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
