"""Network code of the built-in model families (`probe_plugins.nets`).

Kept apart from the plugin modules that register the families, because those are
imported on every `probe` start and must not import torch; these modules are
imported only when a model is built.
"""
