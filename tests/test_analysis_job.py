"""The analysis runner's `Job`: what it derives once, and the plan of a command's jobs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import probe
from probe.analysis.job import Job, plan_jobs
from probe.contract.analysis import params_dict
from probe.rundir.results import result_dir, variant_name


@dataclass(frozen=True)
class Params:
    x: int = probe.param(1, "A value.", min=0, max=10)


def _noop(ctx):
    ctx.out.scalar("x", ctx.params.x)


def test_a_job_derives_its_parameters_variant_and_folders_once(probe_run):
    run = probe.Run(probe_run)
    a = probe.Analysis(name="demo", run=_noop, params=Params, needs=set(), summary="A demo.")
    job = Job(run, a, Params(x=3), 2, [2])
    assert job.pdict == params_dict(Params(x=3)) == {"x": 3}
    assert job.variant == variant_name({"x": 3}, {"x": 1})
    assert job.target == result_dir(run, "demo", job.variant, 2)
    assert job.failed_record == job.target.parent / "epoch_0002.failed.json"
    assert job.skipped_record == job.target.parent / "epoch_0002.skipped.json"
    assert job.label == "demo epoch 2"
    with pytest.raises(AttributeError):
        job.epoch = 3  # type: ignore[misc]


def test_plan_jobs_one_per_epoch_or_one_per_run(probe_run):
    run = probe.Run(probe_run)
    per_epoch = probe.Analysis(
        name="e", run=_noop, params=Params, needs={"model"}, scope="epoch", summary="Per epoch."
    )
    over_run = probe.Analysis(
        name="r", run=_noop, params=Params, needs={"model"}, scope="run", summary="Over epochs."
    )
    jobs = plan_jobs(run, per_epoch, Params(), "all")
    assert [(j.epoch, j.epochs) for j in jobs] == [(e, [e]) for e in run.epochs()]
    (job,) = plan_jobs(run, over_run, Params(), "all")
    assert (job.epoch, job.epochs, job.label) == (None, run.epochs(), "r (run)")
    (last,) = plan_jobs(run, per_epoch, Params(), None)  # an epoch analysis defaults to the last
    assert last.epoch == run.epochs()[-1]


def test_dry_run_lists_each_job_cached_or_to_compute_and_writes_nothing(probe_run, tmp_path):
    import shutil

    from click.testing import CliRunner

    from probe.cli import cli

    run = tmp_path / "copy"
    shutil.copytree(probe_run, run)
    assert CliRunner().invoke(cli, ["analyze", str(run), "-p", "curves"]).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    res = CliRunner().invoke(
        cli, ["analyze", str(run), "-p", "curves", "-p", "filters", "--dry-run"]
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[:3] == [
        "          cached  curves (run)",
        "      to compute  filters epoch 2",
        "2 jobs: 1 cached, 1 to compute",
    ]
    # then the estimate of the job to compute (tests/test_costs.py checks its counts)
    assert lines[3].startswith("estimate: filters: 1 job") and lines[-1].startswith("estimate: ")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing written
    res = CliRunner().invoke(cli, ["analyze", str(run), "-p", "curves", "--dry-run", "--force"])
    assert res.output.splitlines()[0] == "      to compute  curves (run)"
