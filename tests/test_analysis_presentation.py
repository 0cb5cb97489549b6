"""How an analysis is presented is declared by the analysis: `report_order`, `caption`, `headline`.

The record refuses a malformed declaration with one line.
"""

from __future__ import annotations

import pytest

import probe
from probe.contract import registry as plugins


def _analysis(name: str, **kw) -> probe.Analysis:
    return probe.Analysis(name=name, run=print, summary="s", **kw)


def test_presentation_defaults_and_declarations(fresh_registry):
    a = _analysis("plain")
    assert (a.report_order, a.caption, a.headline) == (probe.Analysis.DEFAULT_REPORT_ORDER, "", {})
    given = {"top": "t"}
    b = _analysis("mine", report_order=-3, caption="One line.", headline=given)
    given["more"] = "m"  # the record keeps its own copy
    assert (b.report_order, b.caption, b.headline) == (-3, "One line.", {"top": "t"})
    assert probe.Analysis.DEFAULT_REPORT_ORDER > max(
        a.report_order for a in plugins.registry().analyses.values() if a.provider == "probe-cnn"
    )


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"report_order": 1.5}, "report_order must be an int (lower comes first), got float 1.5"),
        ({"report_order": True}, "report_order must be an int (lower comes first), got bool True"),
        ({"caption": "two\nlines"}, "caption must be one line of text"),
        ({"caption": None}, "caption must be one line of text"),
        (
            {"headline": ("top",)},
            'headline must map scalar names to column labels, e.g. {"top_eigenvalue": "top_eig"}, '
            "got tuple",
        ),
        ({"headline": {"": "x"}}, "headline scalar '' must be a scalar's name"),
        ({"headline": {3: "x"}}, "headline scalar 3 must be a scalar's name"),
        (
            {"headline": {"top": "a\nb"}},
            "headline label 'a\\nb' of 'top' must be one line of 1 to 40 characters",
        ),
        (
            {"headline": {"top": "x" * 41}},
            f"headline label '{'x' * 41}' of 'top' must be one line of 1 to 40 characters",
        ),
    ],
)
def test_a_malformed_declaration_is_one_line(kw, message):
    with pytest.raises(ValueError) as err:
        _analysis("drift", **kw)
    assert str(err.value) == f"analysis 'drift': {message}"
