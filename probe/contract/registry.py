"""Finding and loading plugins, each on its own, so one broken plugin breaks nothing else.

pluggy's `load_setuptools_entrypoints` stops at the first import error; like conda
and kedro, probe iterates the `probe` entry points itself, loads each in its own
try, and keeps a status per plugin (active, error, blocked, not-loaded) that
`probe plugins` shows. Each plugin's `register_analyses` is called separately, so
every analysis is credited to its distribution and version, and a plugin that
raises there is that plugin's problem.

An analysis can be disabled while the rest of its plugin keeps working, each time
with one line that `probe plugins` lists and `probe analyze` repeats as a warning:
  - its parameters' defaults break their own declaration (`Analysis.check_params`);
  - its name is already taken. Who keeps a name does not depend on load order: the
    built-ins (distribution probe-cnn) first, then plugins by distribution name, then
    by entry-point name; every other provider's analysis of that name is disabled.

Environment variables:
  PROBE_PLUGINS=a,b          load only these entry points (empty string: none)
  PROBE_DISABLE_PLUGINS=c,d  load all but these
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from probe.contract import hookspecs
from probe.errors import ProbeError

GROUP = "probe"
BUILTIN_DIST = "probe-cnn"


@dataclass
class PluginInfo:
    """One entry point: where it comes from and how loading it went."""

    name: str
    value: str
    dist: str = ""
    version: str = ""
    status: str = "active"  # active | error | blocked | not-loaded
    error: str = ""
    analyses: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """`plugin 'name' (dist version)`, as the disabled-analysis lines name a provider."""
        dist = " ".join(x for x in (self.dist, self.version) if x)
        builtin = ", built-in" if _is_builtin(self) else ""
        return f"plugin {self.name!r}" + (f" ({dist}{builtin})" if dist else "")


@dataclass
class Disabled:
    """An analysis a plugin registered that probe will not run, and why.

    kind is "clash" (the name belongs to an earlier provider, see `_rank`), "params"
    (its parameters' defaults break their own declaration; `reason` says how) or
    "twice" (its plugin registered the name before).
    """

    analysis: str
    plugin: str
    kind: str
    reason: str = ""


def _normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _is_builtin(info: PluginInfo) -> bool:
    return _normalize(info.dist) == BUILTIN_DIST


def _rank(info: PluginInfo) -> tuple[int, str, str]:
    """Who keeps a contested analysis name: built-ins, then by distribution name, then entry-point name."""
    return (0 if _is_builtin(info) else 1, _normalize(info.dist), info.name)


class Registry:
    """The plugin manager plus everything the plugins registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.analyses: dict[str, Any] = {}  # name -> Analysis
        self.owner: dict[str, str] = {}  # analysis name -> plugin name
        self.models: dict[str, Any] = {}  # name -> ModelFamily
        self.datasets: dict[str, Any] = {}  # name -> DataSource
        self.model_owner: dict[str, str] = {}
        self.dataset_owner: dict[str, str] = {}
        self.disabled: list[
            Disabled
        ] = []  # analyses registered but not run, each with its one-line reason
        self.notes: list[str] = []  # entry points skipped because another has the same name

    def register(self, plugin: Any, info: PluginInfo) -> None:
        """Register a plugin object (module) in-process; tests use this directly."""
        self.plugins[info.name] = info
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:  # pluggy validates hook names and signatures here
            info.status, info.error = "error", f"{type(exc).__name__}: {exc}"
            return
        self._collect(plugin, info)
        if info.status == "active":
            self._collect_kind(plugin, info, "models")
        if info.status == "active":
            self._collect_kind(plugin, info, "datasets")

    def _collect_kind(self, plugin: Any, info: PluginInfo, kind: str) -> None:
        """Model families (`register_models`) or data sets (`register_datasets`): the same rules as analyses.

        A name registered twice by one plugin, or already held by a provider that
        ranks first (`_rank`), is disabled with one line; a broken params class
        disables only that family.
        """
        from probe.contract.datasets import DataSource
        from probe.contract.families import ModelFamily

        cls, hook, table, owner, what = {
            "models": (
                ModelFamily,
                "register_models",
                self.models,
                self.model_owner,
                "model family",
            ),
            "datasets": (
                DataSource,
                "register_datasets",
                self.datasets,
                self.dataset_owner,
                "data set",
            ),
        }[kind]
        impl = getattr(plugin, hook, None)
        if impl is None:
            return
        found: list[Any] = []

        def register(obj: Any) -> None:
            if not isinstance(obj, cls):
                raise TypeError(
                    f"register() takes a probe.{cls.__name__}, got {type(obj).__name__}"
                )
            found.append(obj)

        try:
            impl(register=register)
        except Exception as exc:
            info.status, info.error = "error", f"{hook} raised {type(exc).__name__}: {exc}"
            return
        mine: list[str] = getattr(info, kind)
        for obj in found:
            obj = obj.with_provider(info.dist or info.name, info.version)
            if kind == "models":
                try:
                    obj.check_params()
                except Exception as exc:
                    self.notes.append(
                        f"{what} {obj.name!r} of {info.label} is disabled: {exc}; fix it in "
                        f"{info.dist or info.name}"
                    )
                    continue
            if obj.name in mine:
                self.notes.append(
                    f"{what} {obj.name!r} of {info.label} is registered twice; the second is ignored"
                )
                continue
            if obj.name in table:
                holder = self.plugins[owner[obj.name]]
                loser = info if _rank(info) > _rank(holder) else holder
                keeper = holder if loser is info else info
                self.notes.append(
                    f"{what} {obj.name!r} of {loser.label} is disabled: the name is already provided "
                    f"by {keeper.label}; rename it in {loser.dist or loser.name}"
                )
                if loser is info:
                    continue
                getattr(holder, kind).remove(obj.name)
            table[obj.name] = obj
            owner[obj.name] = info.name
            mine.append(obj.name)

    def _collect(self, plugin: Any, info: PluginInfo) -> None:
        from probe.contract.analysis import Analysis

        found: list[Any] = []

        def register(analysis: Any) -> None:
            if not isinstance(analysis, Analysis):
                raise TypeError(f"register() takes a probe.Analysis, got {type(analysis).__name__}")
            found.append(analysis)

        impl = getattr(plugin, "register_analyses", None)
        if impl is not None:
            try:
                impl(register=register)
            except Exception as exc:
                info.status, info.error = (
                    "error",
                    f"register_analyses raised {type(exc).__name__}: {exc}",
                )
                return
        for analysis in found:
            analysis = analysis.with_provider(info.dist or info.name, info.version)
            try:
                analysis.check_params()
            except Exception as exc:  # a broken params class is this analysis's problem only
                self.disabled.append(Disabled(analysis.name, info.name, "params", str(exc)))
                continue
            if analysis.name in info.analyses:
                self.disabled.append(
                    Disabled(
                        analysis.name,
                        info.name,
                        "twice",
                        "the plugin registers this name twice; the second is ignored",
                    )
                )
                continue
            if analysis.name in self.analyses:
                holder = self.plugins[self.owner[analysis.name]]
                if _rank(info) > _rank(holder):
                    self.disabled.append(Disabled(analysis.name, info.name, "clash"))
                    continue
                holder.analyses.remove(
                    analysis.name
                )  # a built-in registered after a newcomer takes its name back
                self.disabled.append(Disabled(analysis.name, holder.name, "clash"))
            self.analyses[analysis.name] = analysis
            self.owner[analysis.name] = info.name
            info.analyses.append(analysis.name)

    def describe_disabled(self, d: Disabled) -> str:
        """One line: which analysis of which plugin is off, why, and what to do about it."""
        info = self.plugins[d.plugin]
        head = f"analysis {d.analysis!r} of {info.label} is disabled"
        if d.kind == "clash":
            holder = self.plugins[self.owner[d.analysis]]
            skip = [
                s.strip()
                for s in os.environ.get("PROBE_DISABLE_PLUGINS", "").split(",")
                if s.strip()
            ] + [info.name]
            return (
                f"{head}: the name is already provided by {holder.label}; rename it in {info.dist or info.name}, "
                f"or set PROBE_DISABLE_PLUGINS={','.join(skip)} to stop loading {info.name!r}"
            )
        return f"{head}: {d.reason}; fix it in {info.dist or info.name}"

    def problems(self) -> list[str]:
        """Every disabled analysis and skipped entry point, one line each (`probe plugins`, `probe analyze`)."""
        return [self.describe_disabled(d) for d in self.disabled] + list(self.notes)

    def add_commands(self, cli: Any) -> None:
        for name, info in self.plugins.items():
            if info.status != "active":
                continue
            plugin = self.pm.get_plugin(name)
            impl = getattr(plugin, "register_commands", None)
            if impl is None:
                continue
            before = set(cli.commands)
            try:
                impl(cli=cli)
            except Exception as exc:
                info.status, info.error = (
                    "error",
                    f"register_commands raised {type(exc).__name__}: {exc}",
                )
            info.commands = sorted(set(cli.commands) - before)

    def get(self, name: str) -> Any:
        if name not in self.analyses:
            from probe.errors import UsageError

            for d in self.disabled:
                if d.analysis == name:
                    raise UsageError("--plugin", self.describe_disabled(d))
            known = ", ".join(sorted(self.analyses)) or "none"
            raise UsageError("--plugin", f"unknown analysis {name!r}; installed analyses: {known}")
        return self.analyses[name]


_ENTRY_POINTS: Registry | None = None


def _entry_points() -> Registry:
    """The registry of the installed entry points (the process-wide one unless a test replaced it)."""
    global _ENTRY_POINTS
    if _ENTRY_POINTS is None:
        _ENTRY_POINTS = load_registry()
    return _ENTRY_POINTS


def lookup(kind: str, name: str) -> Any:
    """The installed model family (`kind="models"`) or data set (`"datasets"`) `name`, or None.

    Looked up in the process-wide registry and then, if a test replaced it with
    one of its own plugins (`probe.testing.registry_with`), in the installed entry
    points, so a test registry adds to the installed families instead of hiding them.
    """
    table = getattr(registry(), kind)
    if name in table:
        return table[name]
    return getattr(_entry_points(), kind).get(name)


def installed(kind: str) -> dict[str, Any]:
    """Every installed model family or data set by name (a test registry's own first)."""
    return {**getattr(_entry_points(), kind), **getattr(registry(), kind)}


def _selected(ep: EntryPoint) -> bool:
    only = os.environ.get("PROBE_PLUGINS")
    if only is not None:
        return ep.name in {s.strip() for s in only.split(",") if s.strip()}
    disabled = {
        s.strip() for s in os.environ.get("PROBE_DISABLE_PLUGINS", "").split(",") if s.strip()
    }
    return ep.name not in disabled


def load_registry() -> Registry:
    """Load every selected entry point of the `probe` group, each in its own try."""
    reg = Registry()
    found = []
    for ep in entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        found.append(
            (
                ep,
                PluginInfo(
                    ep.name, ep.value, dist.name if dist else "", dist.version if dist else ""
                ),
            )
        )
    for ep, info in sorted(found, key=lambda pair: _rank(pair[1])):
        if ep.name in reg.plugins:
            first = reg.plugins[ep.name]
            reg.notes.append(
                f"entry point {ep.name!r} of {info.dist or ep.value} is not loaded: {first.label} has the "
                f"same name; uninstall one of them"
            )
            continue
        if not _selected(ep):
            info.status = "not-loaded"
            reg.plugins[ep.name] = info
            continue
        if reg.pm.is_blocked(ep.name):
            info.status = "blocked"
            reg.plugins[ep.name] = info
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            info.status = "error"
            info.error = f"{type(exc).__name__}: {exc}"
            info.traceback = traceback.format_exc()  # type: ignore[attr-defined]
            reg.plugins[ep.name] = info
            continue
        reg.register(plugin, info)
    return reg


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY, _ENTRY_POINTS
    if _REGISTRY is None:
        _REGISTRY = _ENTRY_POINTS = load_registry()
    return _REGISTRY


def reset_registry(reg: Registry | None = None) -> None:
    """Replace the process-wide registry (tests register plugins in-process)."""
    global _REGISTRY
    _REGISTRY = reg


def add_plugin_commands(cli: Any) -> None:
    try:
        registry().add_commands(cli)
    except ProbeError:
        pass  # whatever stops the registry loading is reported by the commands that use analyses
