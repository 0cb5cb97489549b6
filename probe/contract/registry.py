"""Finding and loading plugins, each on its own, so one broken plugin breaks nothing else.

pluggy's `load_setuptools_entrypoints` stops at the first import error; like conda
and kedro, probe iterates the `probe` entry points itself, loads each in its own
try, and keeps a status per plugin (active, error, blocked, not-loaded) that
`probe plugins` shows. The `register_*` implementations pluggy collected are called
one plugin at a time (`pm.hook.register_models.get_hookimpls()`, each with the
arguments it names), so every entry is credited to its distribution and version,
and a plugin that raises there is that plugin's problem.

One collector takes the three kinds of entry (analyses, model families, data sets;
`KINDS`) by one set of rules. An entry is disabled while the rest of its plugin
keeps working, each time with one line that `probe plugins` lists and `probe analyze`
repeats as a warning:
  - its parameters' defaults break their own declaration (`check_params`);
  - its plugin registers the name twice (the second is ignored);
  - its name is already taken. Who keeps a name does not depend on load order: the
    built-ins (distribution probe-cnn) first, then plugins by distribution name, then
    by entry-point name; every other provider's entry of that name is disabled.

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
from probe.contract.analysis import Analysis
from probe.contract.records import DataSource, FamilyRecord
from probe.errors import ProbeError, UsageError

GROUP = "probe"
BUILTIN_DIST = "probe-cnn"


@dataclass(frozen=True)
class Kind:
    """One kind of entry plugins register: the hook, the record it takes, how a line names one.

    `table` names both the Registry mapping and the PluginInfo list that hold the
    kind's names. Disabled analyses are kept as `Disabled` records (`probe plugins
    --json` lists them, `probe analyze --plugin NAME` names the reason); a disabled
    family or data set is one line in `Registry.notes`.
    """

    table: str
    hook: str
    record: type  # what register() accepts
    public: str  # its name in probe's API, for the line refusing anything else
    what: str
    checks_params: bool
    keeps_records: bool


ANALYSES = Kind("analyses", "register_analyses", Analysis, "Analysis", "analysis", True, True)
# probe.ModelFamily is the record plus spec() (probe.contract.families, above this module)
MODELS = Kind("models", "register_models", FamilyRecord, "ModelFamily", "model family", True, False)
DATASETS = Kind("datasets", "register_datasets", DataSource, "DataSource", "data set", False, False)
KINDS = (ANALYSES, MODELS, DATASETS)
TWICE = "the plugin registers this name twice; the second is ignored"


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
    """An entry a plugin registered that probe will not use, and why.

    kind is "clash" (the name belongs to a provider that ranks first, see `_rank`),
    "params" (its parameters' defaults break their own declaration; `reason` says
    how) or "twice" (its plugin registered the name before). `analysis` is the
    entry's name (analyses were the first kind; `probe plugins --json` keeps the key).
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
    """Who keeps a contested name: built-ins, then by distribution name, then entry-point name."""
    return (0 if _is_builtin(info) else 1, _normalize(info.dist), info.name)


def _names(variable: str) -> list[str]:
    return [s.strip() for s in os.environ.get(variable, "").split(",") if s.strip()]


class Registry:
    """The plugin manager plus everything the plugins registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        # per kind: entry name -> (entry, name of the plugin that provides it)
        self.tables: dict[str, dict[str, tuple[Any, str]]] = {k.table: {} for k in KINDS}
        self.disabled: list[Disabled] = []  # analyses registered but not run, each with its reason
        self.notes: list[str] = []  # disabled families and data sets, skipped entry points

    # --- what the plugins registered ----------------------------------------------------------
    def entries(self, kind: str) -> dict[str, Any]:
        """Name -> entry of one kind ("analyses", "models" or "datasets")."""
        return {name: entry for name, (entry, _) in self.tables[kind].items()}

    @property
    def analyses(self) -> dict[str, Any]:
        return self.entries("analyses")

    @property
    def models(self) -> dict[str, Any]:
        return self.entries("models")

    @property
    def datasets(self) -> dict[str, Any]:
        return self.entries("datasets")

    @property
    def owner(self) -> dict[str, str]:
        """Analysis name -> the plugin that provides it."""
        return {name: plugin for name, (_, plugin) in self.tables["analyses"].items()}

    # --- registering ----------------------------------------------------------------------------
    def register(self, plugin: Any, info: PluginInfo) -> None:
        """Register a plugin object (module) in-process; tests use this directly."""
        self.plugins[info.name] = info
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:  # pluggy validates hook names and signatures here
            info.status, info.error = "error", f"{type(exc).__name__}: {exc}"
            return
        for kind in KINDS:
            if info.status == "active":
                self._collect(plugin, info, kind)

    def _call(self, plugin: Any, hook: str, **kwargs: Any) -> None:
        """Call `plugin`'s own implementations of `hook`, as pluggy collected them, and no others.

        Each implementation gets the hook's arguments it names (`HookImpl.argnames`),
        as pluggy passes them. One plugin at a time, so an exception is its own.
        """
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin is plugin:
                impl.function(*(kwargs[name] for name in impl.argnames))

    def _collect(self, plugin: Any, info: PluginInfo, kind: Kind) -> None:
        """Everything `plugin` registers of one kind; a hook that raises sets the plugin's error."""
        found: list[Any] = []

        def register(entry: Any) -> None:
            if not isinstance(entry, kind.record):
                raise TypeError(
                    f"register() takes a probe.{kind.public}, got {type(entry).__name__}"
                )
            found.append(entry)

        try:
            self._call(plugin, kind.hook, register=register)
        except Exception as exc:
            info.status, info.error = "error", f"{kind.hook} raised {type(exc).__name__}: {exc}"
            return
        for entry in found:
            self._add(kind, entry.with_provider(info.dist or info.name, info.version), info)

    def _add(self, kind: Kind, entry: Any, info: PluginInfo) -> None:
        """Take one entry, or disable it: bad defaults, registered twice, a name another keeps."""
        table, mine = self.tables[kind.table], getattr(info, kind.table)
        if kind.checks_params:
            try:
                entry.check_params()
            except Exception as exc:  # a broken params class is this entry's problem only
                self._disable(kind, Disabled(entry.name, info.name, "params", str(exc)))
                return
        if entry.name in mine:
            self._disable(kind, Disabled(entry.name, info.name, "twice", TWICE))
            return
        holder = self.plugins[table[entry.name][1]] if entry.name in table else None
        if holder is not None and _rank(info) > _rank(holder):
            self._disable(kind, Disabled(entry.name, info.name, "clash"))
            return
        table[entry.name] = (entry, info.name)
        mine.append(entry.name)
        if holder is not None:  # e.g. a built-in registered after a newcomer takes its name back
            getattr(holder, kind.table).remove(entry.name)
            self._disable(kind, Disabled(entry.name, holder.name, "clash"))

    def _disable(self, kind: Kind, d: Disabled) -> None:
        if kind.keeps_records:
            self.disabled.append(d)
        else:  # described now, naming the provider that holds the name at this point
            self.notes.append(self._describe(kind, d))

    # --- saying what is off ----------------------------------------------------------------------
    def _describe(self, kind: Kind, d: Disabled) -> str:
        info = self.plugins[d.plugin]
        head = f"{kind.what} {d.analysis!r} of {info.label} is disabled"
        fix = info.dist or info.name
        if d.kind == "clash":
            holder = self.plugins[self.tables[kind.table][d.analysis][1]]
            line = f"{head}: the name is already provided by {holder.label}; rename it in {fix}"
            if not kind.keeps_records:
                return line
            skip = ",".join([*_names("PROBE_DISABLE_PLUGINS"), info.name])
            return f"{line}, or set PROBE_DISABLE_PLUGINS={skip} to stop loading {info.name!r}"
        if d.kind == "twice" and not kind.keeps_records:
            return f"{head.removesuffix(' is disabled')} is registered twice; the second is ignored"
        return f"{head}: {d.reason}; fix it in {fix}"

    def describe_disabled(self, d: Disabled) -> str:
        """One line: which analysis of which plugin is off, why, and what to do about it."""
        return self._describe(ANALYSES, d)

    def problems(self) -> list[str]:
        """Every disabled entry and skipped entry point, one line each (plugins, analyze)."""
        return [self.describe_disabled(d) for d in self.disabled] + list(self.notes)

    def add_commands(self, cli: Any) -> None:
        """Each active plugin's `register_commands(cli)`; one that raises makes its status error."""
        for name, info in self.plugins.items():
            if info.status != "active":
                continue
            before = set(cli.commands)
            try:
                self._call(self.pm.get_plugin(name), "register_commands", cli=cli)
            except Exception as exc:
                info.status = "error"
                info.error = f"register_commands raised {type(exc).__name__}: {exc}"
            info.commands = sorted(set(cli.commands) - before)

    def get(self, name: str) -> Any:
        """The analysis `name`, or a UsageError saying why it is disabled or which are installed."""
        if name not in self.tables["analyses"]:
            for d in self.disabled:
                if d.analysis == name:
                    raise UsageError("--plugin", self.describe_disabled(d))
            known = ", ".join(sorted(self.tables["analyses"])) or "none"
            raise UsageError("--plugin", f"unknown analysis {name!r}; installed analyses: {known}")
        return self.tables["analyses"][name][0]


_ENTRY_POINTS: Registry | None = None


def _entry_points() -> Registry:
    """The registry of the installed entry points (the process-wide one, unless a test set one)."""
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
    found = registry().tables[kind].get(name) or _entry_points().tables[kind].get(name)
    return found[0] if found else None


def installed(kind: str) -> dict[str, Any]:
    """Every installed model family or data set by name (a test registry's own first)."""
    return {**_entry_points().entries(kind), **registry().entries(kind)}


def _selected(ep: EntryPoint) -> bool:
    if os.environ.get("PROBE_PLUGINS") is not None:
        return ep.name in _names("PROBE_PLUGINS")
    return ep.name not in _names("PROBE_DISABLE_PLUGINS")


def load_registry() -> Registry:
    """Load every selected entry point of the `probe` group, each in its own try."""
    reg = Registry()
    found = []
    for ep in entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            ep.name, ep.value, dist.name if dist else "", dist.version if dist else ""
        )
        found.append((ep, info))
    for ep, info in sorted(found, key=lambda pair: _rank(pair[1])):
        if ep.name in reg.plugins:
            first = reg.plugins[ep.name]
            reg.notes.append(
                f"entry point {ep.name!r} of {info.dist or ep.value} is not loaded: {first.label} "
                f"has the same name; uninstall one of them"
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
