"""Cache keys cover exactly what a job read (issue 12): reference epochs, extending, renaming
and moving a run, development mode, failure records, undeclared reads, and a
cache hit without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import probe
from probe.analysis.runner import run_analyses, run_job
from probe.rundir.results import FINGERPRINT_CACHE, Fingerprints
from probe.rundir.run import Run
from probe.testing import registry_with

ROOT = Path(__file__).resolve().parents[1]
CALLS: list[tuple[str, int | None]] = []


def _strict(path: Path) -> dict:
    """Parse JSON refusing NaN/Infinity, as any other JSON reader would."""

    def bad(token):
        raise ValueError(f"bare {token} in {path}")

    return json.loads(path.read_text(), parse_constant=bad)


def _drift(ctx):
    """Distance of the job's first conv weights from epoch 0's: reads a reference epoch."""
    CALLS.append(("drift", ctx.epoch))
    w0 = ctx.checkpoint(0).model_state["features.0.weight"]
    w = ctx.checkpoint().model_state["features.0.weight"]
    ctx.out.scalar("drift", float((w - w0).norm()))


def _declared(ctx):
    """Reads epoch 0 outside the Context (as a ctx.map piece would) and says so."""
    CALLS.append(("declared", ctx.epoch))
    ctx.declare_reads(checkpoints=[0])
    ctx.out.scalar("size", (ctx.run.checkpoint_path(0)).stat().st_size)


def _narrow(ctx):
    """Reads only what later training cannot change: its epochs' metrics, config,
    epochs up to its own."""
    CALLS.append(("narrow", ctx.epoch))
    rows = ctx.metrics([ctx.epoch])
    ctx.out.scalar("lr", rows[0].get("lr"))
    ctx.out.scalar("wd", ctx.config()["train"]["weight_decay"])
    ctx.out.scalar("n_before", len(ctx.all_epochs(upto=ctx.epoch)))
    ctx.out.scalar("classes", len(ctx.class_names()))
    ctx.probe_set()


def _all_metrics(ctx):
    CALLS.append(("all-metrics", ctx.epoch))
    ctx.out.scalar("rows", len(ctx.metrics()))


class KeyPlugin:
    @probe.hookimpl
    def register_analyses(self, register):
        register(
            probe.Analysis(
                name="drift", run=_drift, needs={"checkpoint"}, summary="Drift from epoch 0."
            )
        )
        register(
            probe.Analysis(
                name="declared", run=_declared, needs={"checkpoint"}, summary="Declares epoch 0."
            )
        )
        register(
            probe.Analysis(
                name="narrow",
                run=_narrow,
                needs={"metrics", "config", "probe_set"},
                summary="Reads narrowly.",
            )
        )
        register(
            probe.Analysis(
                name="all-metrics", run=_all_metrics, needs={"metrics"}, summary="All rows."
            )
        )


def _statuses(run, names, epochs, reg, **kw):
    return {
        (o.analysis, o.epoch): o.status
        for o in run_analyses(run, names, epochs, registry=reg, **kw)
    }


def _rewrite_epoch(run_dir: Path, epoch: int) -> None:
    """Replace a checkpoint with different weights, as a retrain would."""
    import torch

    from probe.rundir import checkpoint

    path = probe.Run(run_dir).checkpoint_path(epoch)
    ck = probe.load_checkpoint(path)
    model = ck.build_model()
    with torch.no_grad():
        model.features[0].weight.add_(1.0)
    checkpoint.save(
        path, epoch=epoch, model=model, spec=ck.spec, metrics=ck.metrics, config_hash=ck.config_hash
    )


def test_a_reference_epoch_is_keyed(probe_run, fresh_registry):
    reg = registry_with(KeyPlugin())
    assert _statuses(probe_run, ["drift", "declared"], "last", reg) == {
        ("drift", 2): "ok",
        ("declared", 2): "ok",
    }
    manifest = _strict(probe_run / "analyses/drift/default/epoch_0002/manifest.json")
    assert set(manifest["inputs"]) == {
        "checkpoints/epoch_0000.safetensors",
        "checkpoints/epoch_0002.safetensors",
    }
    declared = _strict(probe_run / "analyses/declared/default/epoch_0002/manifest.json")
    assert set(declared["inputs"]) == {"checkpoints/epoch_0000.safetensors"}
    assert set(_statuses(probe_run, ["drift", "declared"], "last", reg).values()) == {"cached"}
    _rewrite_epoch(probe_run, 1)  # not read: still cached
    assert set(_statuses(probe_run, ["drift", "declared"], "last", reg).values()) == {"cached"}
    _rewrite_epoch(probe_run, 0)
    CALLS.clear()
    assert set(_statuses(probe_run, ["drift", "declared"], "last", reg).values()) == {"ok"}
    assert CALLS == [("drift", 2), ("declared", 2)]
    assert set(_statuses(probe_run, ["drift", "declared"], "last", reg).values()) == {"cached"}


def test_extending_training_keeps_earlier_results(probe_run, fresh_registry):
    from probe.testing import TINY, synthetic_dataset
    from probe.training.config import TrainConfig
    from probe.training.loop import train

    reg = registry_with(KeyPlugin())
    names = ["drift", "narrow", "all-metrics"]
    first = _statuses(probe_run, names, "all", reg)
    assert set(first.values()) == {"ok"} and len(first) == 9
    config_before = (probe_run / "config.json").read_bytes()
    train(
        probe_run,
        TrainConfig(**{**TINY, "epochs": 3}),
        resume=True,
        quiet=True,
        dataset=synthetic_dataset(seed=0),
    )
    assert probe.Run(probe_run).epochs() == [0, 1, 2, 3]
    assert (probe_run / "config.json").read_bytes() != config_before  # train.epochs was rewritten
    again = _statuses(probe_run, names, "0-2", reg)
    expected = {k: "cached" for k in first}
    expected.update(
        {("all-metrics", e): "ok" for e in (0, 1, 2)}
    )  # it read every metrics row: one more now
    assert again == expected
    assert _statuses(probe_run, ["narrow"], "last", reg) == {("narrow", 3): "ok"}


def test_renaming_or_moving_a_run_keeps_its_results(probe_run, fresh_registry, tmp_path):
    reg = registry_with(KeyPlugin())
    names = ["drift", "narrow", "all-metrics"]
    assert set(_statuses(probe_run, names, "all", reg).values()) == {"ok"}
    memo = Fingerprints(Run(probe_run))._cache_path()
    assert memo.is_file() and not (probe_run / "analyses" / FINGERPRINT_CACHE).exists()
    renamed = probe_run.parent / "renamed-run"
    probe_run.rename(renamed)
    assert set(_statuses(renamed, names, "all", reg).values()) == {"cached"}
    # another machine: new path, new inodes, new mtimes (a copy that keeps no metadata)
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(renamed, moved, copy_function=shutil.copyfile)
    for p in moved.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    assert set(_statuses(moved, names, "all", reg).values()) == {"cached"}
    # the fingerprint cache is an optimisation only: a damaged one changes nothing
    Fingerprints(Run(moved))._cache_path().write_text(
        '{"format": "probe-fingerprints/1", "files": {"x": 1}'
    )
    assert set(_statuses(moved, names, "all", reg).values()) == {"cached"}
    _rewrite_epoch(moved, 2)
    after = _statuses(moved, names, "all", reg)
    assert after[("drift", 2)] == "ok" and after[("drift", 1)] == "cached"


def test_a_forged_fingerprint_cache_entry_is_not_trusted_once_the_file_changes(
    probe_run, fresh_registry
):
    reg = registry_with(KeyPlugin())
    assert _statuses(probe_run, ["drift"], "last", reg) == {("drift", 2): "ok"}
    cache = Fingerprints(Run(probe_run))._cache_path()
    before = json.loads(cache.read_text())
    _rewrite_epoch(
        probe_run, 2
    )  # a new file: new inode and ctime, so the old entry no longer applies
    cache.write_text(json.dumps(before))
    assert _statuses(probe_run, ["drift"], "last", reg) == {("drift", 2): "ok"}


def test_a_digest_forged_inside_the_run_is_never_read(probe_run, fresh_registry):
    """The issue's attack: change a checkpoint, then write its old digest under the new file's
    stat key into RUN/analyses/.fingerprints.json. The memo is not read from the run at all."""
    reg = registry_with(KeyPlugin())
    assert _statuses(probe_run, ["drift"], "last", reg) == {("drift", 2): "ok"}
    memo = json.loads(Fingerprints(Run(probe_run))._cache_path().read_text())
    name = "checkpoints/epoch_0002.safetensors"
    old_digest = memo["files"][name][4]
    _rewrite_epoch(probe_run, 2)
    st = os.stat(probe_run / name)
    forged = {
        "format": "probe-fingerprints/1",
        "files": {name: [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, old_digest]},
    }
    (probe_run / "analyses" / FINGERPRINT_CACHE).write_text(json.dumps(forged))
    assert _statuses(probe_run, ["drift"], "last", reg) == {("drift", 2): "ok"}


PLUGIN_SRC = """
import probe

def run(ctx):
    ctx.out.scalar("value", {value})

@probe.hookimpl
def register_analyses(register):
    register(probe.Analysis(name="devplug", run=run, needs=set(), \
summary="Edited while developing."))
"""


def test_development_mode_keys_on_the_plugin_source(
    probe_run, fresh_registry, tmp_path, monkeypatch
):
    import importlib

    pkg = tmp_path / "src" / "devplug_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(PLUGIN_SRC.format(value=1))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    module = importlib.import_module("devplug_pkg")
    reg = registry_with(module)
    monkeypatch.delenv("PROBE_DEV", raising=False)

    def status():
        return _statuses(probe_run, ["devplug"], "last", reg)[("devplug", 2)]

    assert status() == "ok"
    (pkg / "__init__.py").write_text(PLUGIN_SRC.format(value=2) + "\n# edited\n")
    assert status() == "cached"  # outside development mode the source is not part of the key
    monkeypatch.setenv("PROBE_DEV", "1")
    assert status() == "ok"  # that result was not keyed on any source
    assert status() == "cached"
    (pkg / "__init__.py").write_text(PLUGIN_SRC.format(value=3))
    assert status() == "ok"
    (pkg / "helpers.py").write_text("X = 1\n")  # any file of the plugin's package counts
    assert status() == "ok"
    monkeypatch.delenv("PROBE_DEV")
    assert status() == "cached"  # a development-mode result stays valid outside it
    sys.modules.pop("devplug_pkg", None)


@dataclass(frozen=True)
class NanParams:
    x: float = probe.param(1.0, "A value.")


def _boom(ctx):
    raise RuntimeError(f"bad value {ctx.params.x} \udcff")


def _fine(ctx):
    ctx.out.scalar("x", ctx.params.x)
    ctx.out.json("values", {1: float("nan"), "b": b"bytes", "inf": [float("inf")]})


def test_failure_records_and_manifests_are_always_valid_json(probe_run, fresh_registry):
    boom = probe.Analysis(name="boom", run=_boom, params=NanParams, needs=set(), summary="Fails.")
    fine = probe.Analysis(
        name="fine", run=_fine, params=NanParams, needs=set(), summary="Succeeds."
    )
    run = probe.Run(probe_run)
    nan = NanParams(x=float("nan"))  # however it got past the parameter checks
    failed = run_job(run, boom, nan, 2, [2], device="cpu")
    assert failed.status == "failed" and "bad value nan" in failed.error
    (record,) = (probe_run / "analyses/boom").glob("*/epoch_0002.failed.json")
    assert _strict(record)["params"] == {"x": "nan"}
    ok = run_job(run, fine, nan, 2, [2], device="cpu")
    assert ok.status == "ok"
    manifest = _strict(ok.path / "manifest.json")
    assert manifest["params"] == {"x": "nan"} and manifest["scalars"] == {"x": None}
    assert _strict(ok.path / "values.json") == {"1": None, "b": "bytes", "inf": [None]}
    assert run_job(run, fine, nan, 2, [2], device="cpu").status == "cached"


def test_a_failed_job_leaves_no_empty_result_folder(probe_run, fresh_registry, monkeypatch):
    from probe.analysis import runner as analyze

    def refuse(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(analyze.atomic, "write_json", refuse)
    boom = probe.Analysis(name="boom", run=_boom, params=NanParams, needs=set(), summary="Fails.")
    outcome = run_job(probe.Run(probe_run), boom, NanParams(), 2, [2], device="cpu")
    assert outcome.status == "failed"
    assert not (probe_run / "analyses" / "boom").exists()


def _model_without_need(ctx):
    ctx.model()


def _checkpoint_without_need(ctx):
    ctx.checkpoint()


def test_every_undeclared_read_is_refused_model_included(probe_run, fresh_registry):
    run = probe.Run(probe_run)
    cases = [
        (_model_without_need, {"checkpoint"}, "reads model without declaring needs={'model'}"),
        (
            _checkpoint_without_need,
            {"model"},
            "reads checkpoint without declaring needs={'checkpoint'}",
        ),
        (lambda ctx: ctx.metrics(), {"config"}, "needs={'metrics'}"),
        (lambda ctx: ctx.config(), {"metrics"}, "needs={'config'}"),
        (lambda ctx: ctx.declare_reads(checkpoints=[0]), {"metrics"}, "needs={'checkpoint'}"),
        (lambda ctx: ctx.declare_reads(activations=[0]), {"checkpoint"}, "needs={'activations'}"),
    ]
    for i, (fn, needs, message) in enumerate(cases):
        a = probe.Analysis(
            name=f"undeclared{i}", run=fn, needs=needs, summary="Reads what it did not declare."
        )
        outcome = run_job(run, a, a.params(), 2, [2], device="cpu")
        assert outcome.status == "failed" and message in outcome.error, (i, outcome.error)


def test_a_fully_cached_analyze_does_not_import_torch(probe_run, fresh_registry):
    outcomes = run_analyses(probe_run, ["curves", "cka", "filters"], "all")
    assert {o.status for o in outcomes} == {"ok"}
    code = textwrap.dedent(f"""
        import sys
        sys.argv = ["probe", "analyze", {str(probe_run)!r}, "-p", "curves", "-p", "cka", \
"-p", "filters",
                    "--epochs", "all", "-q"]
        from probe.cli import main
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        assert "torch" not in sys.modules, "torch imported on a cache hit"
    """)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "0 computed, 7 cached, 0 failed" in done.stdout


@pytest.mark.parametrize(
    "name", ["../x", "checkpoints/epoch_12.safetensors", "metrics.jsonl#a", "/etc/passwd"]
)
def test_a_manifest_listing_unknown_inputs_is_not_a_hit(probe_run, fresh_registry, name):
    reg = registry_with(KeyPlugin())
    (o,) = run_analyses(probe_run, ["drift"], "last", registry=reg)
    manifest = json.loads((o.path / "manifest.json").read_text())
    manifest["inputs"] = {name: "0" * 64}
    (o.path / "manifest.json").write_text(json.dumps(manifest))
    assert run_analyses(probe_run, ["drift"], "last", registry=reg)[0].status == "ok"


def test_config_key_ignores_where_and_how_long_and_fills_new_defaults(probe_run):
    from probe.rundir.results import CONFIG, Fingerprints

    run_path = probe_run / "config.json"
    base = json.loads(run_path.read_text())

    def fingerprint(config):
        run_path.write_text(json.dumps(config))
        return Fingerprints(probe.Run(probe_run), persistent=False)(CONFIG)

    reference = fingerprint(base)
    unkeyed = {
        **base,
        "device": "cuda:3",
        "device_name": "H100",
        "versions": {"torch": "9"},
        "data_source": "/elsewhere/cifar10",
        "config_hash": "x",
        "train": {**base["train"], "epochs": 300, "device": "cuda", "data": "/mnt/data"},
    }
    assert fingerprint(unkeyed) == reference
    older = {
        **base,
        "train": {k: v for k, v in base["train"].items() if k != "precision"},
    }  # before a key existed
    assert base["train"]["precision"] == "fp32" and fingerprint(older) == reference
    assert fingerprint({**base, "train": {**base["train"], "lr": 0.5}}) != reference
    assert fingerprint({**base, "classes": list(reversed(base["classes"]))}) != reference


def test_a_cached_result_is_served_only_as_it_was_sealed(probe_run, fresh_registry):
    """A scalar edited in a cached manifest, or a result file deleted or changed: the seal
    no longer holds, the report does not show it, and analyze computes it again."""
    from probe.rundir.results import iter_results

    reg = registry_with(KeyPlugin())
    assert _statuses(probe_run, ["drift"], "last", reg) == {("drift", 2): "ok"}
    target = probe_run / "analyses" / "drift" / "default" / "epoch_0002"
    manifest = json.loads((target / "manifest.json").read_text())
    true_value = manifest["scalars"]["drift"]
    manifest["scalars"]["drift"] = 999.0
    (target / "manifest.json").write_text(json.dumps(manifest))
    assert target not in [p for p, _ in iter_results(Run(probe_run))]
    assert _statuses(probe_run, ["drift"], "last", reg) == {("drift", 2): "ok"}
    assert json.loads((target / "manifest.json").read_text())["scalars"]["drift"] == true_value
    assert _statuses(probe_run, ["drift"], "last", reg) == {("drift", 2): "cached"}

    from probe.contract.registry import load_registry

    full = load_registry()
    (o,) = run_analyses(probe_run, ["filters"], "last", device="cpu", registry=full)
    assert o.status == "ok" and (o.path / "filters.png").is_file()
    assert (
        run_analyses(probe_run, ["filters"], "last", device="cpu", registry=full)[0].status
        == "cached"
    )
    (o.path / "filters.png").unlink()
    assert o.path not in [p for p, _ in iter_results(Run(probe_run))]
    assert (
        run_analyses(probe_run, ["filters"], "last", device="cpu", registry=full)[0].status == "ok"
    )
    with open(o.path / "filters.h5", "r+b") as fh:  # one byte of a result file changed
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    assert (
        run_analyses(probe_run, ["filters"], "last", device="cpu", registry=full)[0].status == "ok"
    )


def test_a_cache_hit_re_reads_no_unchanged_result_file(probe_run, fresh_registry, monkeypatch):
    """The seal's file digests go through the stat-keyed memo: the second hit hashes nothing."""
    from probe.contract.registry import load_registry
    from probe.io import safeio

    full = load_registry()
    (o,) = run_analyses(probe_run, ["filters"], "last", device="cpu", registry=full)
    assert o.status in ("ok", "cached")
    hashed: list[str] = []
    real = safeio.sha256_file
    monkeypatch.setattr(
        safeio, "sha256_file", lambda p, *a, **k: hashed.append(str(p)) or real(p, *a, **k)
    )
    assert (
        run_analyses(probe_run, ["filters"], "last", device="cpu", registry=full)[0].status
        == "cached"
    )
    hashed.clear()
    assert (
        run_analyses(probe_run, ["filters"], "last", device="cpu", registry=full)[0].status
        == "cached"
    )
    assert hashed == []
