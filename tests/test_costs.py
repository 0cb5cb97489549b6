"""Costs a user can see coming: the declared unit counts are what the numerics perform.

References: the Hessian's own product counter (`hvps_total`, every product of every batch's
operator) and a forward-pass counter hooked on the model each job loads; solvers are given
tolerances they cannot meet, so they run to their bound, which the declaration counts. The dry
run prints the estimate and writes nothing; progress lines never reach a non-terminal output.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from probe.analysis import estimate
from probe.analysis.context import Context
from probe.analysis.job import plan_jobs
from probe.analysis.runner import run_analyses
from probe.cli import cli
from probe.contract.registry import registry
from probe.rundir.run import Run


def info_and_cost(run_dir, name: str, params: dict, epochs: str = "last"):
    analysis = registry().get(name)
    (job,) = plan_jobs(Run(run_dir), analysis, analysis.make_params(params), epochs)
    info, _, _ = estimate.run_info(job)
    return info, estimate.costs_of(job, info)


@pytest.fixture
def forwards(monkeypatch):
    """Images of every forward pass of the models jobs load (a backward pass has one too)."""
    seen: list[int] = []
    model = Context.model

    def counted(self, epoch=None):
        m = model(self, epoch)
        m.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
        return m

    monkeypatch.setattr(Context, "model", counted)
    return seen


HESSIAN = {"n_images": "16", "max_iter": "5", "tol": "1e-12", "residual_tol": "1e-12"}


@pytest.mark.parametrize(
    "extra",
    [
        {"top_k": "2", "smallest": "1", "trace_samples": "4", "density_steps": "3"},
        {"batches": "2", "per_batch": "solve", "trace_samples": "2", "density_runs": "0"},
        {"method": "power", "blocks": "layer", "trace_samples": "0", "density_runs": "0"},
    ],
)
def test_hessian_declares_the_products_it_performs(probe_run, extra) -> None:
    params = {**HESSIAN, **extra}
    info, (c,) = info_and_cost(probe_run, "hessian", params, "1,2")
    (o,) = run_analyses(probe_run, ["hessian"], "1,2", {"hessian": params}, device="cpu")
    assert o.status == "ok", o.error
    done = json.loads((o.path / "manifest.json").read_text())["scalars"]["hvps_total"]
    assert (c.unit, c.images, c.upto, info.epochs) == ("hvp", 16, True, 2)
    assert c.units == done


def test_landscape_and_sharpness_declare_their_forward_passes(probe_run, forwards) -> None:
    cases = {
        "landscape": {"resolution": "3", "n_images": "16", "batch_size": "16"},
        "sharpness": {
            "steps": "2",
            "samples": "3",
            "target_rel_stderr": "0",
            "n_images": "16",
            "batch_size": "16",
        },
    }
    for name, params in cases.items():
        forwards.clear()
        _, costs = info_and_cost(probe_run, name, params)
        (o,) = run_analyses(probe_run, [name], "last", {name: params}, device="cpu")
        assert o.status == "ok", o.error
        assert all(c.images == 16 for c in costs)
        assert set(forwards) == {16}, forwards  # one pass per unit: batch_size holds them
        assert sum(c.units for c in costs) == len(forwards), (name, costs)


def test_gradcheck_declares_its_perturbed_forwards(probe_run, forwards) -> None:
    params = {"n_images": "4", "samples_per_layer": "2", "max_layers": "2"}
    _, (c,) = info_and_cost(probe_run, "gradcheck", params)
    (o,) = run_analyses(probe_run, ["gradcheck"], "last", {"gradcheck": params}, device="cpu")
    assert o.status == "ok", o.error
    assert json.loads((o.path / "manifest.json").read_text())["scalars"]["n_checked"] == 4
    assert (c.units, c.images) == (len(forwards), 4) == (4 * 4 + 2, 4)


def test_the_dry_run_prints_the_estimate_and_writes_nothing(probe_run) -> None:
    before = {p: p.stat().st_mtime_ns for p in probe_run.rglob("*")}
    args = ["analyze", str(probe_run), "-p", "landscape", "-p", "curves", "--dry-run"]
    res = CliRunner().invoke(cli, [*args, "--param", "landscape.resolution=5"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "      to compute  landscape epoch 2" in lines
    (land,) = [line for line in lines if line.startswith("estimate: landscape: 1 job x ~26 ")]
    assert "forwards of 64 images, about " in land and " s here)" in land
    assert lines[-1].startswith("estimate: about ") and "an estimate" in lines[-1]
    assert {p: p.stat().st_mtime_ns for p in probe_run.rglob("*")} == before  # nothing written


def test_no_progress_or_estimate_on_output_that_is_not_a_terminal(probe_run) -> None:
    args = ["analyze", str(probe_run), "-p", "curves", "-p", "filters", "--epochs", "all"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "\r" not in res.output and "it/s" not in res.output and "%|" not in res.output
    assert lines[-1] == "4 computed, 0 cached, 0 failed"
    assert all(line.strip().startswith(("ok curves", "ok filters")) for line in lines[:-1])
