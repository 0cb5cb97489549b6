"""The plugin contract: the records a plugin registers, the hooks it implements, the registry that collects them.

Analyses (`Analysis`, `param`), model families (`ModelFamily`, `ModelSpec`, `InputSpec`),
data sets (`DataSource`, `Augmentation`) and the pluggy hooks. No torch import: registering
plugins costs nothing at start-up. Plugins import these names from `probe` itself.
"""
