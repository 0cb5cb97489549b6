"""The run directory: its layout, the one writer, and safe readers of every file in it.

The format is documented in docs/run-directory.md. Checkpoints, activation dumps,
analysis results and their cache keys, the training lock, and `Run`, the reader.
"""
