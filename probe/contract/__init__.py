"""The plugin contract: the records plugins register, the hooks they implement, the registry.

Imports point one way inside the layer: params (typed parameters) -> analysis and
records (what plugins register) -> registry (pluggy, entry points, one set of rules
for clashes) -> families (`ModelSpec`, `get_family`) and datasets (`get_source`),
which find installed entries through it. No torch import: registering plugins costs
nothing at start-up. Plugins import these names from `probe` itself.
"""
