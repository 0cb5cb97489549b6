"""Files: atomic writes, safe reads of untrusted files, confinement to a folder, JSON-safe values.

The bottom layer: it imports nothing of probe but `probe.errors`, and no torch.
"""
