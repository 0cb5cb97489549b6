"""The plugin contract: four narrow hooks, called once per plugin.

A plugin is a module (or object) found through the `probe` entry-point group whose
functions are marked with `probe.hookimpl`:

    @probe.hookimpl
    def register_analyses(register):
        register(probe.Analysis(name="example", run=run, summary="..."))

    @probe.hookimpl
    def register_models(register):
        register(probe.ModelFamily(name="mlp", build=build, summary="...", params=Params))

    @probe.hookimpl
    def register_datasets(register):
        register(probe.DataSource(name="mnist", load=load, summary="..."))

    @probe.hookimpl
    def register_commands(cli):
        @cli.command()
        def hello(): ...

Hooks must do cheap work only (no torch import): they run on every `probe` start.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("probe")
hookimpl = pluggy.HookimplMarker("probe")


@hookspec
def register_analyses(register: Any) -> None:
    """Call `register(Analysis(...))` once per analysis this plugin provides."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the `probe` command group."""


@hookspec
def register_models(register: Any) -> None:
    """Call `register(ModelFamily(...))` once per model family this plugin provides."""


@hookspec
def register_datasets(register: Any) -> None:
    """Call `register(DataSource(...))` once per image data set this plugin provides."""
