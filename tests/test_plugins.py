"""The plugin contract: loading, isolation, parameters, the cache, and the CLI."""

import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import probe
from probe.analysis.runner import run_analyses
from probe.cli import cli
from probe.contract import registry as plugins
from probe.errors import UsageError
from probe.testing import registry_with

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class CountParams:
    scale: float = probe.param(1.0, "Multiplier.", min=0.0)
    mode: str = probe.param("a", "Mode.", choices=("a", "b"))


CALLS: list[int | None] = []


def _count(ctx):
    CALLS.append(ctx.epoch)
    w = ctx.model().features[0].weight.detach()
    ctx.out.scalar("w_sum", float(w.sum()) * ctx.params.scale)
    ctx.out.json("info", {"epoch": ctx.epoch, "mode": ctx.params.mode})


class CountPlugin:
    @probe.hookimpl
    def register_analyses(self, register):
        register(
            probe.Analysis(
                name="count",
                run=_count,
                params=CountParams,
                needs={"model"},
                summary="Sum of the first conv's weights.",
            )
        )


def test_in_process_plugin_runs_and_caches(probe_run, fresh_registry):
    reg = registry_with(CountPlugin())
    CALLS.clear()
    first = run_analyses(probe_run, ["count"], "0,last", registry=reg)
    assert [o.status for o in first] == ["ok", "ok"] and CALLS == [0, 2]
    manifest = json.loads((first[1].path / "manifest.json").read_text())
    assert manifest["params"] == {"scale": 1.0, "mode": "a"} and manifest["epoch"] == 2
    assert "checkpoints/epoch_0002.safetensors" in manifest["inputs"]
    again = run_analyses(probe_run, ["count"], "0,last", registry=reg)
    assert [o.status for o in again] == ["cached", "cached"] and CALLS == [0, 2]
    forced = run_analyses(probe_run, ["count"], "last", registry=reg, force=True)
    assert forced[0].status == "ok" and CALLS == [0, 2, 2]
    other = run_analyses(probe_run, ["count"], "last", {"count": {"scale": "2"}}, registry=reg)
    assert other[0].status == "ok" and other[0].path.parent.name.startswith("p-")


def test_changed_input_invalidates_the_cache(probe_run, fresh_registry):
    reg = registry_with(CountPlugin())
    run_analyses(probe_run, ["count"], "last", registry=reg)
    ckpt = probe.Run(probe_run).checkpoint_path(2)
    ck = probe.load_checkpoint(ckpt)  # rewrite epoch 2 with different weights, as a retrain would
    from probe.rundir import checkpoint

    model = ck.build_model()
    with __import__("torch").no_grad():
        model.features[0].weight.add_(1.0)
    checkpoint.save(
        ckpt, epoch=2, model=model, spec=ck.spec, metrics=ck.metrics, config_hash=ck.config_hash
    )
    assert run_analyses(probe_run, ["count"], "last", registry=reg)[0].status == "ok"


@pytest.mark.parametrize(
    "pairs, needle",
    [
        (["scale=-1"], "--param scale"),
        (["scale=abc"], "expected float"),
        (["mode=c"], "not one of a, b"),
        (["nope=1"], "no selected analysis has a parameter 'nope'"),
        (["scale"], "KEY=VALUE"),
    ],
)
def test_bad_params_fail_before_anything_runs(probe_run, fresh_registry, pairs, needle):
    registry_with(CountPlugin())
    CALLS.clear()
    result = CliRunner().invoke(
        cli, ["analyze", str(probe_run), "-p", "count", *sum((["--param", p] for p in pairs), [])]
    )
    assert result.exit_code == 2, result.output
    assert needle in result.output and CALLS == []


def test_unknown_plugin_lists_what_exists(probe_run, fresh_registry):
    registry_with(CountPlugin())
    result = CliRunner().invoke(cli, ["analyze", str(probe_run), "-p", "nope"])
    assert (
        result.exit_code == 2
        and "unknown analysis 'nope'" in result.output
        and "count" in result.output
    )


def test_not_a_run_directory(tmp_path, fresh_registry):
    result = CliRunner().invoke(cli, ["analyze", str(tmp_path), "-p", "curves"])
    assert result.exit_code != 0 and "not a probe run directory" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_raising_analysis_is_reported_and_others_finish(probe_run, fresh_registry):
    def boom(ctx):
        raise RuntimeError("kaput")

    class Bad:
        @probe.hookimpl
        def register_analyses(self, register):
            register(
                probe.Analysis(name="boom", run=boom, summary="Always fails.", needs={"model"})
            )

    registry_with(CountPlugin(), Bad())
    result = CliRunner().invoke(cli, ["analyze", str(probe_run), "-p", "boom", "-p", "count"])
    assert result.exit_code == 1
    assert "FAILED boom epoch 2: RuntimeError: kaput" in result.output
    assert "1 computed, 0 cached, 1 failed" in result.output
    logs = list((probe_run / "logs").glob("analyze-*.log"))
    assert logs and "Traceback" in logs[0].read_text()
    assert (probe_run / "analyses/boom/default/epoch_0002.failed.json").exists()


def test_duplicate_analysis_names_disable_the_newcomer(fresh_registry):
    reg = registry_with(CountPlugin(), CountPlugin())  # more cases: tests/test_plugin_registry.py
    assert reg.owner["count"] == "test0" and len(reg.problems()) == 1
    assert reg.problems()[0].startswith(
        "analysis 'count' of plugin 'test1' (tests 0) is disabled: the name is "
        "already provided by plugin 'test0' (tests 0)"
    )


def test_broken_entry_point_is_reported_and_the_rest_load(monkeypatch, fresh_registry):
    eps = [
        EntryPoint("broken", "probe_no_such_module_xyz", "probe"),
        EntryPoint("curves", "probe_plugins.curves", "probe"),
    ]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps)
    reg = plugins.load_registry()
    assert (
        reg.plugins["broken"].status == "error"
        and "ModuleNotFoundError" in reg.plugins["broken"].error
    )
    assert reg.plugins["curves"].status == "active" and "curves" in reg.analyses
    monkeypatch.setenv("PROBE_DISABLE_PLUGINS", "curves")
    reg = plugins.load_registry()
    assert reg.plugins["curves"].status == "not-loaded" and "curves" not in reg.analyses
    monkeypatch.delenv("PROBE_DISABLE_PLUGINS")
    monkeypatch.setenv("PROBE_PLUGINS", "curves")
    reg = plugins.load_registry()
    assert reg.plugins["broken"].status == "not-loaded" and reg.plugins["curves"].status == "active"


def test_plugins_command_shows_status_and_params(monkeypatch, fresh_registry):
    eps = [
        EntryPoint("broken", "probe_no_such_module_xyz", "probe"),
        EntryPoint("curves", "probe_plugins.curves", "probe"),
    ]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps)
    out = CliRunner().invoke(cli, ["plugins", "--verbose"]).output
    assert "broken [error]" in out and "ModuleNotFoundError" in out
    assert "curves [active]" in out and "--param log_loss (bool, default False)" in out


def test_builtin_plugins_are_exactly_the_declared_entry_points(fresh_registry):
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
        "probe"
    ]
    modules = {
        p.stem for p in (ROOT / "plugins").glob("*.py") if not p.stem.startswith("_")
    }  # _x: helpers
    assert {v.removeprefix("probe_plugins.") for v in declared.values()} == modules
    assert all(v.startswith("probe_plugins.") for v in declared.values())
    reg = plugins.load_registry()
    assert all(reg.plugins[name].status == "active" for name in declared), {
        n: reg.plugins[n].error for n in declared
    }


def test_cli_start_does_not_import_torch():
    code = (
        "import sys; from probe.cli import cli; from probe.contract.registry import registry; "
        "registry(); assert 'torch' not in sys.modules, 'torch imported at start-up'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_analysis_record_validates_itself():
    with pytest.raises(ValueError, match="scope"):
        probe.Analysis(name="x", run=lambda c: None, summary="s", scope="weekly")
    with pytest.raises(ValueError, match="unknown needs"):
        probe.Analysis(name="x", run=lambda c: None, summary="s", needs={"gpu"})
    with pytest.raises(ValueError, match="name"):
        probe.Analysis(name="Bad Name", run=lambda c: None, summary="s")


def test_undeclared_reads_are_refused(probe_run, fresh_registry):
    def sneaky(ctx):
        ctx.metrics()

    reg = registry_with(
        SimpleNamespace(
            register_analyses=probe.hookimpl(
                lambda register: register(
                    probe.Analysis(
                        name="sneaky",
                        run=sneaky,
                        summary="Reads metrics without saying so.",
                        needs={"model"},
                    )
                )
            )
        )
    )
    (o,) = run_analyses(probe_run, ["sneaky"], "last", registry=reg)
    assert o.status == "failed" and "without declaring" in o.error


def test_curves_builtin(probe_run, fresh_registry):
    (o,) = run_analyses(probe_run, ["curves"])
    assert o.status == "ok"
    m = json.loads((o.path / "manifest.json").read_text())
    rows = probe.Run(probe_run).metrics()
    assert m["scalars"]["final_val_acc"] == rows[-1]["val_acc"]
    assert m["scalars"]["best_val_acc"] == max(r["val_acc"] for r in rows)
    assert (o.path / "curves.png").stat().st_size > 10_000
    with pytest.raises(UsageError):
        run_analyses(probe_run, ["curves"], params={"curves": {"log_loss": "maybe"}})
