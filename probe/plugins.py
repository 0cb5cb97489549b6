"""Finding and loading plugins, each on its own, so one broken plugin breaks nothing else.

pluggy's `load_setuptools_entrypoints` stops at the first import error; like conda
and kedro, probe iterates the `probe` entry points itself, loads each in its own
try, and keeps a status per plugin (active, error, blocked, not-loaded) that
`probe plugins` shows. Each plugin's `register_analyses` is called separately, so
every analysis is credited to its distribution and version, and a plugin that
raises there is that plugin's problem.

Environment variables:
  PROBE_PLUGINS=a,b          load only these entry points (empty string: none)
  PROBE_DISABLE_PLUGINS=c,d  load all but these
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import ProbeError

GROUP = "probe"


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


class DuplicateAnalysis(ProbeError):
    pass


class Registry:
    """The plugin manager plus everything the plugins registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.analyses: dict[str, Any] = {}  # name -> Analysis
        self.owner: dict[str, str] = {}  # analysis name -> plugin name

    def register(self, plugin: Any, info: PluginInfo) -> None:
        """Register a plugin object (module) in-process; tests use this directly."""
        self.plugins[info.name] = info
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:  # pluggy validates hook names and signatures here
            info.status, info.error = "error", f"{type(exc).__name__}: {exc}"
            return
        self._collect(plugin, info)

    def _collect(self, plugin: Any, info: PluginInfo) -> None:
        from .analysis import Analysis

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
                info.status, info.error = "error", f"register_analyses raised {type(exc).__name__}: {exc}"
                return
        for analysis in found:
            if analysis.name in self.analyses:
                other = self.owner[analysis.name]
                raise DuplicateAnalysis(
                    f"analysis {analysis.name!r} is registered by two plugins: {other} and {info.name}; "
                    f"uninstall one or disable it with PROBE_DISABLE_PLUGINS={info.name}"
                )
            analysis = analysis.with_provider(info.dist or info.name, info.version)
            self.analyses[analysis.name] = analysis
            self.owner[analysis.name] = info.name
            info.analyses.append(analysis.name)

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
                info.status, info.error = "error", f"register_commands raised {type(exc).__name__}: {exc}"
            info.commands = sorted(set(cli.commands) - before)

    def get(self, name: str) -> Any:
        if name not in self.analyses:
            from .errors import UsageError

            known = ", ".join(sorted(self.analyses)) or "none"
            raise UsageError("--plugin", f"unknown analysis {name!r}; installed analyses: {known}")
        return self.analyses[name]


def _selected(ep: EntryPoint) -> bool:
    only = os.environ.get("PROBE_PLUGINS")
    if only is not None:
        return ep.name in {s.strip() for s in only.split(",") if s.strip()}
    disabled = {s.strip() for s in os.environ.get("PROBE_DISABLE_PLUGINS", "").split(",") if s.strip()}
    return ep.name not in disabled


def load_registry() -> Registry:
    """Load every selected entry point of the `probe` group, each in its own try."""
    reg = Registry()
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(ep.name, ep.value, dist.name if dist else "", dist.version if dist else "")
        if ep.name in reg.plugins:
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
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = load_registry()
    return _REGISTRY


def reset_registry(reg: Registry | None = None) -> None:
    """Replace the process-wide registry (tests register plugins in-process)."""
    global _REGISTRY
    _REGISTRY = reg


def add_plugin_commands(cli: Any) -> None:
    try:
        registry().add_commands(cli)
    except ProbeError:
        pass  # a duplicate analysis is reported by the commands that use analyses
