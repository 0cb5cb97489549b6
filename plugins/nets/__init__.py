"""The networks of the built-in model families (imported only when a model is built: they import torch)."""
