"""probe's built-in analyses, installed as `probe_plugins`.

Each module is one plugin registered through the `probe` entry-point group in
pyproject.toml, exactly as a third-party package would register its own, and
uses only the public API: `probe` itself (`probe.hookimpl`, `probe.Analysis`,
`probe.param`, `probe.ModelFamily`, the `Context` it is given, ...) and the modules
in `probe.PUBLIC_MODULES` (`probe.datasets`, `probe.numerics.*`, ...), never a private name.
"""
