"""Analysing runs: the job runner behind `probe analyze`, the `Context` each analysis sees, and executors."""
