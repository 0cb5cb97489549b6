"""Bridges from other training frameworks to `probe.Recorder` (docs/own-loop.md).

Each module imports its framework when it is imported itself, never through `import
probe`: `probe.integrations.lightning` needs the `lightning` extra.
"""
