"""The built-in model families' networks (imported when a model is built: they import torch)."""
