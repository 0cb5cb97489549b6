"""Where the analysis runner used to live; kept so plugin tests written against the old docs still
import.

New code imports `run_analyses` and `Outcome` from `probe.analysis.runner`.
"""

from probe.analysis.runner import Outcome, run_analyses, summary_line

__all__ = ["Outcome", "run_analyses", "summary_line"]
