"""Issue 12 items 3, 5, 6: what the registry accepts, disables and says when
plugins register analyses.

Plugins are registered in-process (`Registry.register`), each with the distribution
it would come from, so the precedence rules (built-ins first, then distribution name)
are exercised without installing anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

import probe
from probe.analysis.runner import run_analyses
from probe.cli import cli
from probe.contract import registry as plugins
from probe.errors import UsageError


def _noop(ctx) -> None:
    ctx.out.scalar("epoch", ctx.epoch)


class Provides:
    """A plugin object registering the given analyses."""

    def __init__(self, *analyses: probe.Analysis):
        self.analyses = analyses

    @probe.hookimpl
    def register_analyses(self, register):
        for a in self.analyses:
            register(a)


def analysis(name: str, summary: str = "Writes its epoch.", **kw) -> probe.Analysis:
    return probe.Analysis(name=name, run=_noop, summary=summary, needs={"checkpoint"}, **kw)


def info(name: str, dist: str) -> plugins.PluginInfo:
    return plugins.PluginInfo(name, f"{dist.replace('-', '_')}:plugin", dist, "1.0")


def registry(*entries: tuple[str, str, Provides]) -> plugins.Registry:
    """Register (entry point, distribution, plugin) in the order given; make it process-wide."""
    reg = plugins.Registry()
    for name, dist, obj in entries:
        reg.register(obj, info(name, dist))
    plugins.reset_registry(reg)
    return reg


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


# --- name clashes ---------------------------------------------------------------------------------

CLASH_WITH_BUILTIN = (
    "analysis 'drift' of plugin 'thirdp' (third-party 1.0) is disabled: the name is already "
    "provided by plugin 'builtin' (probe-cnn 1.0, built-in); rename it in third-party, or set "
    "PROBE_DISABLE_PLUGINS=thirdp to stop loading 'thirdp'"
)


@pytest.mark.parametrize("builtin_first", [True, False])
def test_a_builtin_keeps_its_name_whatever_the_load_order(
    builtin_first, fresh_registry, monkeypatch
):
    monkeypatch.delenv("PROBE_DISABLE_PLUGINS", raising=False)
    builtin = (
        "builtin",
        "probe-cnn",
        Provides(analysis("drift", "Built-in drift."), analysis("other")),
    )
    third = (
        "thirdp",
        "third-party",
        Provides(analysis("drift", "Their drift."), analysis("spectra")),
    )
    reg = registry(*([builtin, third] if builtin_first else [third, builtin]))
    assert reg.get("drift").summary == "Built-in drift." and reg.owner["drift"] == "builtin"
    assert sorted(reg.analyses) == [
        "drift",
        "other",
        "spectra",
    ]  # the newcomer's other analysis still works
    assert (
        reg.plugins["thirdp"].analyses == ["spectra"] and reg.plugins["thirdp"].status == "active"
    )
    assert reg.problems() == [CLASH_WITH_BUILTIN]


def test_two_third_parties_are_ordered_by_distribution_name(fresh_registry, monkeypatch):
    monkeypatch.setenv("PROBE_DISABLE_PLUGINS", "old")
    reg = registry(
        ("zeta", "zzz-plugins", Provides(analysis("drift", "From zzz."))),
        ("alpha", "aaa-plugins", Provides(analysis("drift", "From aaa."))),
    )
    assert reg.get("drift").summary == "From aaa."
    assert reg.problems() == [
        "analysis 'drift' of plugin 'zeta' (zzz-plugins 1.0) is disabled: the name is already "
        "provided by plugin 'alpha' (aaa-plugins 1.0); rename it in zzz-plugins, or set "
        "PROBE_DISABLE_PLUGINS=old,zeta to stop loading 'zeta'"
    ]


def test_every_clash_is_listed_and_analyze_runs_the_rest(probe_run, fresh_registry, monkeypatch):
    monkeypatch.delenv("PROBE_DISABLE_PLUGINS", raising=False)
    registry(
        ("builtin", "probe-cnn", Provides(analysis("drift"), analysis("spectra"))),
        (
            "thirdp",
            "third-party",
            Provides(analysis("drift"), analysis("spectra"), analysis("fresh")),
        ),
        ("more", "more-plugins", Provides(analysis("fresh"))),
    )
    listed = invoke("plugins")
    assert listed.exit_code == 0, listed.output
    lines = [s.strip() for s in listed.output.splitlines()]
    assert "3 problems (the other analyses work):" in lines
    clashes = [s for s in lines if " is disabled: the name is already provided by " in s]
    assert [s.split(" is disabled")[0] for s in clashes] == [
        "analysis 'drift' of plugin 'thirdp' (third-party 1.0)",
        "analysis 'spectra' of plugin 'thirdp' (third-party 1.0)",
        "analysis 'fresh' of plugin 'thirdp' (third-party 1.0)",  # more-plugins < third-party
    ]
    as_json = json.loads(invoke("plugins", "--json").output)
    assert [(d["analysis"], d["plugin"], d["kind"]) for d in as_json["disabled"]] == [
        ("drift", "thirdp", "clash"),
        ("spectra", "thirdp", "clash"),
        ("fresh", "thirdp", "clash"),
    ]
    assert sorted(a["name"] for a in as_json["analyses"]) == ["drift", "fresh", "spectra"]

    result = invoke("analyze", str(probe_run), "--all", "--epochs", "last")
    assert result.exit_code == 0, result.output
    warnings = [s for s in result.stderr.splitlines() if s.startswith("warning: ")]
    assert [w.removeprefix("warning: ") for w in warnings] == [c for c in clashes]
    assert "3 computed, 0 cached, 0 failed" in result.stdout


def test_a_plugin_registering_one_name_twice_keeps_the_first(fresh_registry):
    reg = registry(
        ("dup", "dup-plugin", Provides(analysis("drift", "First."), analysis("drift", "Second.")))
    )
    assert reg.get("drift").summary == "First." and [d.kind for d in reg.disabled] == ["twice"]
    assert reg.problems() == [
        "analysis 'drift' of plugin 'dup' (dup-plugin 1.0) is disabled: the plugin registers "
        "this name twice; the second is ignored; fix it in dup-plugin"
    ]


# --- defaults that break their own declaration ----------------------------------------------------


@dataclass(frozen=True)
class BadMax:
    eps: float = probe.param(2.0, "Step.", max=1.0)


@dataclass(frozen=True)
class BadChoice:
    mode: str = probe.param("c", "Mode.", choices=("a", "b"))


@dataclass(frozen=True)
class BadType:
    steps: int = probe.param(2.5, "Steps.")


@dataclass(frozen=True)
class NanDefault:
    tol: float = probe.param(math.nan, "Tolerance.")


@dataclass(frozen=True)
class OwnCheck:
    lo: float = probe.param(2.0, "Low.")
    hi: float = probe.param(1.0, "High.")

    def __post_init__(self) -> None:
        if self.lo > self.hi:
            raise ValueError("lo must not exceed hi")


@dataclass(frozen=True)
class Fine:
    eps: float = probe.param(1, "An int default for a float is fine.", min=0.0, max=1.0)
    tol: float = probe.param(math.inf, "inf allowed here.", allow_nonfinite=True)


@pytest.mark.parametrize(
    "params, reason",
    [
        (
            BadMax,
            "parameter 'eps': its default 2.0 is refused by its own declaration "
            "(must be <= 1.0, got 2.0)",
        ),
        (
            BadChoice,
            "parameter 'mode': its default 'c' is refused by its own declaration "
            "('c' is not one of a, b)",
        ),
        (
            BadType,
            "parameter 'steps': its default 2.5 is refused by its own declaration "
            "(expected int, got 2.5)",
        ),
        (
            NanDefault,
            "parameter 'tol': its default nan is refused by its own declaration (must be a "
            "finite number, got nan)",
        ),
        (
            OwnCheck,
            "the defaults of OwnCheck are refused by its own checks (ValueError: "
            "lo must not exceed hi)",
        ),
    ],
)
def test_a_bad_default_disables_only_that_analysis(params, reason, probe_run, fresh_registry):
    reg = registry(
        (
            "mine",
            "my-plugin",
            Provides(analysis("bad", params=params), analysis("good", params=Fine)),
        )
    )
    expected = (
        "analysis 'bad' of plugin 'mine' (my-plugin 1.0) is disabled: "
        f"{reason}; fix it in my-plugin"
    )
    assert reg.problems() == [expected]
    assert sorted(reg.analyses) == ["good"] and reg.plugins["mine"].status == "active"
    with pytest.raises(UsageError, match="^--plugin: analysis 'bad' of plugin 'mine'"):
        reg.get("bad")
    listed = invoke("plugins")
    assert listed.exit_code == 0 and f"  {expected}" in listed.output.splitlines()
    assert "    good: Writes its epoch." in listed.output.splitlines()
    as_json = json.loads(
        invoke("plugins", "--json").output,  # strict JSON: an inf default is "inf", not Infinity
        parse_constant=lambda c: pytest.fail(f"bare {c} in probe plugins --json"),
    )
    (good,) = [a for a in as_json["analyses"] if a["name"] == "good"]
    assert {p["name"]: p["default"] for p in good["params"]}["tol"] == "inf"
    (outcome,) = run_analyses(probe_run, ["good"], "last", registry=reg)
    assert outcome.status == "ok"


# --- version is a str -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version, shown", [(2, "int 2"), (1.5, "float 1.5"), ("", "str ''"), (None, "NoneType None")]
)
def test_version_must_be_a_str(version, shown):
    with pytest.raises(ValueError) as err:
        analysis("drift", version=version)
    hint = str(version) if isinstance(version, int | float) else "1"
    assert str(err.value) == (
        f"analysis 'drift': version must be a non-empty str (e.g. version=\"{hint}\"), got {shown}"
    )


def test_an_int_version_is_shown_as_the_plugins_error(fresh_registry):
    class IntVersion:
        @probe.hookimpl
        def register_analyses(self, register):
            register(probe.Analysis(name="drift", run=_noop, summary="x", version=2))

    reg = registry(("mine", "my-plugin", IntVersion()))
    assert reg.plugins["mine"].status == "error" and "drift" not in reg.analyses
    assert reg.plugins["mine"].error == (
        "register_analyses raised ValueError: analysis 'drift': version must be a "
        'non-empty str (e.g. version="2"), got int 2'
    )
    assert analysis("drift", version="2").version == "2"


# --- non-finite values ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranged:
    eps: float = probe.param(0.1, "Bounded step.", min=0.0, max=1.0)
    scale: float = probe.param(1.0, "Unbounded.")
    cap: float | None = probe.param(None, "Optional.")
    ok: float = probe.param(1.0, "Accepts nan/inf.", allow_nonfinite=True)
    pos: float = probe.param(1.0, "Accepts inf, not -inf.", min=0.0, allow_nonfinite=True)


RANGED = analysis("ranged", params=Ranged)


@pytest.mark.parametrize("name", ["eps", "scale", "cap"])
@pytest.mark.parametrize(
    "value, shown",
    [
        ("nan", "nan"),
        ("NaN", "nan"),
        ("inf", "inf"),
        ("-inf", "-inf"),
        ("Infinity", "inf"),
        (" -Infinity ", "-inf"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
    ],
)
def test_non_finite_values_are_refused(name, value, shown):
    with pytest.raises(UsageError) as err:
        RANGED.make_params({name: value})
    assert str(err.value) == f"--param {name}: ranged: must be a finite number, got {shown}"
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    "name, value, check",
    [
        ("ok", "nan", math.isnan),
        ("ok", "-inf", lambda v: v == -math.inf),
        ("ok", math.inf, lambda v: v == math.inf),
        ("pos", "inf", lambda v: v == math.inf),
        ("eps", "1", lambda v: v == 1.0),
        ("scale", 10**300, lambda v: v == 1e300),
    ],
)
def test_allowed_values(name, value, check):
    assert check(getattr(RANGED.make_params({name: value}), name))


def test_allow_nonfinite_still_applies_the_bounds_and_sweeps_get_the_same_checks():
    with pytest.raises(UsageError, match=r"^--param pos: ranged: must be >= 0.0, got -inf$"):
        RANGED.make_params({"pos": "-inf"})
    with pytest.raises(
        UsageError, match=r"^--param scale: ranged: 10{400} is too large for a float$"
    ):
        RANGED.make_params({"scale": 10**400})  # a TOML integer where a float is meant
    spec = {s.name: s for s in RANGED.param_specs()}
    assert spec["ok"].allow_nonfinite and not spec["eps"].allow_nonfinite
    assert spec["ok"].describe() == "ok (float, default 1.0) (nan/inf allowed): Accepts nan/inf."


def test_cli_refuses_nan_before_anything_runs(probe_run, fresh_registry):
    registry(("mine", "my-plugin", Provides(RANGED)))
    result = invoke("analyze", str(probe_run), "-p", "ranged", "--param", "eps=nan")
    assert result.exit_code == 2
    assert result.output.strip() == "error: --param eps: ranged: must be a finite number, got nan"
    assert not (probe_run / "analyses" / "ranged").exists()


# --- the documentation ----------------------------------------------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "writing-a-plugin.md").read_text()


def test_the_plugin_doc_covers_every_field_keyword_need_and_output():
    import dataclasses
    import inspect

    from probe.analysis.context import ResultWriter
    from probe.contract.analysis import NEEDS

    rows = {line.split("|")[1].strip(): line for line in DOC.splitlines() if line.startswith("| `")}
    for f in dataclasses.fields(probe.Analysis):
        assert f"`{f.name}`" in rows, f"Analysis.{f.name} is not in the doc's table"
        if f.default is not dataclasses.MISSING:
            shown = (
                "NoParams"
                if f.name == "params"
                else json.dumps(f.default)
                if f.name != "needs"
                else "{" + ", ".join(json.dumps(n) for n in sorted(f.default)) + "}"
            )
            assert f"`{shown}`" in rows[f"`{f.name}`"], (
                f"the doc gives another default for Analysis.{f.name}"
            )
    for kw in list(inspect.signature(probe.param).parameters):
        assert f"`{kw}`" in rows, f"probe.param's {kw!r} is not in the doc"
    for need in NEEDS:
        assert f"`{need}`" in rows, f"needs value {need!r} is not in the doc"
    for name, _ in inspect.getmembers(ResultWriter, inspect.isfunction):
        if not name.startswith("_"):
            assert f"ctx.out.{name}(" in DOC, f"ctx.out.{name} is not in the doc"


def _python_blocks(text: str) -> list[str]:
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


@pytest.mark.parametrize("source", ["docs/writing-a-plugin.md", "README.md"])
def test_the_documented_plugin_runs(source, probe_run, fresh_registry, monkeypatch):
    code = next(b for b in _python_blocks((ROOT / source).read_text()) if "register_analyses" in b)
    module = __import__("types").ModuleType("documented_plugin")
    monkeypatch.setitem(
        __import__("sys").modules, "documented_plugin", module
    )  # dataclasses look it up
    exec(compile(code, source, "exec"), module.__dict__)
    reg = registry(("mine", "my-probe-plugin", module))
    assert reg.problems() == [] and "mine" in reg.analyses
    (outcome,) = run_analyses(probe_run, ["mine"], "last", registry=reg)
    assert outcome.status == "ok", outcome.error
    manifest = json.loads((outcome.path / "manifest.json").read_text())
    assert "mean_activation.h5" in manifest["files"] and manifest["scalars"]["max_mean"] > 0


def test_installed_entry_points_load_builtins_first(monkeypatch, fresh_registry):
    """Through load_registry: a third party listed first still loses the name, and a reused
    entry-point name is noted."""
    from types import SimpleNamespace

    import probe_plugins.curves

    def ep(name: str, dist: str, obj) -> SimpleNamespace:
        return SimpleNamespace(
            name=name,
            value=f"{dist}:{name}",
            dist=SimpleNamespace(name=dist, version="2.0"),
            load=lambda: obj,
        )

    eps = [
        ep(
            "aaa",
            "aaa-plugins",
            Provides(analysis("curves", "Not the built-in."), analysis("extra")),
        ),
        ep("curves", "zzz-plugins", Provides(analysis("other"))),
        ep("curves", "probe_cnn", probe_plugins.curves),
    ]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps)
    monkeypatch.delenv("PROBE_PLUGINS", raising=False)
    monkeypatch.delenv("PROBE_DISABLE_PLUGINS", raising=False)
    reg = plugins.load_registry()
    assert list(reg.plugins) == ["curves", "aaa"] and reg.owner == {
        "curves": "curves",
        "extra": "aaa",
    }
    assert reg.get("curves").provider == "probe_cnn"
    assert reg.problems() == [
        "analysis 'curves' of plugin 'aaa' (aaa-plugins 2.0) is disabled: the name is already "
        "provided by plugin 'curves' (probe_cnn 2.0, built-in); rename it in aaa-plugins, or set "
        "PROBE_DISABLE_PLUGINS=aaa to stop loading 'aaa'",
        "entry point 'curves' of zzz-plugins is not loaded: plugin 'curves' (probe_cnn 2.0, "
        "built-in) has the same name; uninstall one of them",
    ]
    monkeypatch.setenv("PROBE_DISABLE_PLUGINS", "aaa")
    assert plugins.load_registry().problems()[:1] == [reg.problems()[1]]


# --- model families and data sets: the same rules, one line each in the notes ----------------


@dataclass(frozen=True)
class FamilyParams:
    width: int = probe.param(4, "Units.", min=1)


@dataclass(frozen=True)
class BadFamilyParams:
    width: int = probe.param(0, "Units.", min=1)


def family(name: str, summary: str = "A family.", params: type = FamilyParams) -> probe.ModelFamily:
    return probe.ModelFamily(name=name, build=lambda p, i, n: None, summary=summary, params=params)


def source(name: str, summary: str = "A data set.") -> probe.DataSource:
    return probe.DataSource(name=name, load=lambda data, quiet: None, summary=summary)


class Registers:
    """A plugin object registering the given families and data sets."""

    def __init__(self, *entries):
        self.entries = entries

    @probe.hookimpl
    def register_models(self, register):
        for e in self.entries:
            if isinstance(e, probe.ModelFamily):
                register(e)

    @probe.hookimpl
    def register_datasets(self, register):
        for e in self.entries:
            if isinstance(e, probe.DataSource):
                register(e)


@pytest.mark.parametrize("builtin_first", [True, False])
def test_families_and_data_sets_follow_the_analysis_rules(builtin_first, fresh_registry):
    builtin = (
        "builtin",
        "probe-cnn",
        Registers(family("net", "Built-in."), source("pics", "Ours.")),
    )
    third = (
        "thirdp",
        "third-party",
        Registers(
            family("net", "Theirs."),
            family("other"),
            family("other", "Again."),
            family("broken", params=BadFamilyParams),
            source("pics", "Theirs."),
            source("more"),
        ),
    )
    reg = registry(*([builtin, third] if builtin_first else [third, builtin]))
    assert reg.models["net"].summary == "Built-in." and reg.datasets["pics"].summary == "Ours."
    assert sorted(reg.models) == ["net", "other"] and sorted(reg.datasets) == ["more", "pics"]
    assert reg.plugins["thirdp"].models == ["other"] and reg.plugins["thirdp"].datasets == ["more"]
    assert reg.plugins["builtin"].models == ["net"] and reg.plugins["thirdp"].status == "active"
    assert reg.disabled == []  # families and data sets are noted, not listed as disabled analyses
    third_label, builtin_label = (
        "plugin 'thirdp' (third-party 1.0)",
        "plugin 'builtin' (probe-cnn 1.0, built-in)",
    )
    clash_net = (
        f"model family 'net' of {third_label} is disabled: the name is already provided by "
        f"{builtin_label}; rename it in third-party"
    )
    clash_pics = (
        f"data set 'pics' of {third_label} is disabled: the name is already provided by "
        f"{builtin_label}; rename it in third-party"
    )
    twice = f"model family 'other' of {third_label} is registered twice; the second is ignored"
    broken = (
        f"model family 'broken' of {third_label} is disabled: parameter 'width': its default 0 is "
        "refused by its own declaration (must be >= 1, got 0); fix it in third-party"
    )
    expected = [clash_net, twice, broken, clash_pics]
    if not builtin_first:  # the built-in takes its names back when it registers second
        expected = [twice, broken, clash_net, clash_pics]
    assert reg.problems() == expected


def test_a_hook_that_raises_or_registers_the_wrong_record_is_its_plugins_error(fresh_registry):
    class WrongRecord:
        @probe.hookimpl
        def register_models(self, register):
            register(source("pics"))

    class Raises:
        @probe.hookimpl
        def register_datasets(self, register):
            raise RuntimeError("no network")

    reg = registry(
        ("wrong", "wrong-plugin", WrongRecord()),
        ("raises", "raises-plugin", Raises()),
        ("fine", "fine-plugin", Registers(family("net"))),
    )
    assert reg.plugins["wrong"].status == "error" and reg.plugins["wrong"].error == (
        "register_models raised TypeError: register() takes a probe.ModelFamily, got DataSource"
    )
    assert reg.plugins["raises"].error == "register_datasets raised RuntimeError: no network"
    assert list(reg.models) == ["net"] and reg.plugins["fine"].status == "active"
