"""Studies across runs: `probe sweep` (a grid of runs, locally or on Dask) and `probe compare` (one
table)."""
