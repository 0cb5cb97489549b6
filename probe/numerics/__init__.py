"""The numerics of every analysis, on any `nn.Module` and batch: curvature, landscape, sharpness, representations,
probing, collapse, gradient_noise, interpolation.

Pure functions and operators over models and tensors: no run directory, no plugin, no
files. The analysis plugins are thin layers over them, and so is the in-process API.
"""
