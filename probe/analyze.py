"""`probe.analyze(run_dir, analyses, ...)`, and where the analysis runner used to live.

`probe.analyze` is this module, made callable: calling it is `probe.analysis.api.analyze`
(what `probe analyze` does, returning the results; see there). The module itself stays so
that `from probe.analyze import run_analyses` (plugin tests written against the old docs)
still imports: an `import probe.analyze` sets the attribute `probe.analyze` to this module,
which is why the callable is the module rather than a function beside it.

New code imports `run_analyses` and `Outcome` from `probe.analysis.runner`.
"""

import sys
import types
from typing import Any

from probe.analysis.api import AnalysisResult, analyze
from probe.analysis.runner import Outcome, run_analyses, summary_line

__all__ = ["AnalysisResult", "Outcome", "analyze", "run_analyses", "summary_line"]


class _CallableModule(types.ModuleType):
    """This module's type: `probe.analyze(...)` calls `analyze`."""

    def __call__(self, *args: Any, **kwargs: Any) -> list[AnalysisResult]:
        return analyze(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
