"""probe's built-in analyses, installed as `probe_plugins`.

Each module is one plugin registered through the `probe` entry-point group in
pyproject.toml, exactly as a third-party package would register its own, and
uses only the public API (`probe.hookimpl`, `probe.Analysis`, `probe.param`, the
`Context` it is given).
"""
