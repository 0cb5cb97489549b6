"""Shared fixtures. `probe_run` (a tiny trained run) comes from probe.testing, the
pytest plugin probe ships."""

from __future__ import annotations

import os

import pytest

# Tests run on 2-core CI machines, often beside other work: oversubscribed OpenMP threads
# make torch many times slower, so the test process uses one.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep decoded-dataset caches and probe's state folder out of the user's home."""
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path_factory.getbasetemp() / "probe-cache"))
    monkeypatch.setenv("PROBE_STATE", str(tmp_path_factory.getbasetemp() / "probe-state"))


@pytest.fixture
def fresh_registry():
    """Reset the process-wide plugin registry before and after a test that registers plugins."""
    from probe.contract.registry import reset_registry

    reset_registry(None)
    yield
    reset_registry(None)


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops run many times faster on one torch thread than on two contended ones."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
