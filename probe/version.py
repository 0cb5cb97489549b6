"""The version of probe, in a module of its own so that any layer can read it without importing
`probe`."""

__version__ = "0.1.0"
