"""Analysing runs: the job runner of `probe analyze`, the `Context` an analysis sees, executors."""
