"""How an analysis is presented is declared by the analysis: `report_order`, `caption`, `headline`.

The report and `probe compare` name no analysis, so a third party's analysis (registered here
in-process, next to the real `curves`) is ordered, captioned and tabulated exactly like a
built-in one; and the record refuses a malformed declaration with one line.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import probe
from probe.analysis.runner import run_analyses
from probe.cli import ProbeGroup
from probe.contract import registry as plugins
from probe.report.command import report_command
from probe.report.digest import INDEX, REPORT_DIR
from probe.studies.compare import compare_command
from probe.studies.table import headline_columns
from probe.testing import registry_with


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [0, 1])
    return fig


def _early(ctx) -> None:  # run-wide, before `curves`; its figure has no caption of its own
    ctx.out.figure("early", _figure())
    ctx.out.scalar("value", 2.5)
    ctx.out.scalar("value_se", 0.25)


def _zeta(ctx) -> None:  # named after `late`, ordered before it
    ctx.out.figure("zeta", _figure())
    ctx.out.scalar("y", 7.0)


def _late(ctx) -> None:  # the default order: after every built-in
    ctx.out.figure("late", _figure())
    ctx.out.scalar("x", 3.0)
    ctx.out.scalar("other", 1.0)


@probe.hookimpl
def _register(register) -> None:
    run_wide = dict(scope="run", needs={"metrics"})
    register(
        probe.Analysis(
            name="early",
            run=_early,
            summary="A third party's analysis, first.",
            report_order=5,
            caption="Early: read it left to right.",
            headline={"value": "early_val"},
            **run_wide,
        )
    )
    register(
        probe.Analysis(
            name="zeta",
            run=_zeta,
            summary="Ordered by its declaration, not its name.",
            report_order=500,
            headline={"y": "zeta_y"},
            **run_wide,
        )
    )
    register(
        probe.Analysis(
            name="late",
            run=_late,
            summary="No declared order.",
            headline={"x": "late_x"},
            **run_wide,
        )
    )


@pytest.fixture
def registry(fresh_registry):
    from probe_plugins import curves

    return registry_with(curves, SimpleNamespace(register_analyses=_register))


def invoke(command, *args: object):
    group = ProbeGroup()
    group.add_command(command)
    return CliRunner().invoke(group, [command.name, *map(str, args)])


def test_a_third_party_analysis_is_ordered_and_captioned_by_its_declaration(probe_run, registry):
    run_analyses(probe_run, ["late", "zeta", "curves", "early"], None, registry=registry)
    r = invoke(report_command, probe_run)
    assert r.exit_code == 0, r.output
    page = (probe_run / REPORT_DIR / INDEX).read_text()
    sections = re.findall(r'<section id="a-([a-z]+)-default"', page)
    assert sections == ["early", "curves", "zeta", "late"]  # 5, 10 (built-in), 500, 1000
    assert "Early: read it left to right." in page  # its declared caption
    assert "Figure late.png of the late analysis: No declared order." in page  # none declared
    assert "Loss, accuracy, gradient norm and generalisation gap per epoch" in page  # curves'


def test_a_third_party_headline_is_a_column_of_compare_in_report_order(
    probe_run, registry, tmp_path
):
    run_analyses(probe_run, ["late", "zeta", "curves", "early"], None, registry=registry)
    r = invoke(compare_command, probe_run, "--no-plots", "--out", tmp_path / "cmp")
    assert r.exit_code == 0, r.output
    header, _, row = r.output.splitlines()[:3]
    head = header.split()
    assert head.index("early_val") < head.index("zeta_y") < head.index("late_x")
    assert "late.other" not in head and "2.5 ± 0.25" in row
    csv_head = (tmp_path / "cmp" / "table.csv").read_text().splitlines()[0].split(",")
    assert {"early.value", "early.value_se", "late.other", "late.x", "zeta.y"} <= set(csv_head)


def _analysis(name: str, **kw) -> probe.Analysis:
    return probe.Analysis(name=name, run=print, summary="s", **kw)


def test_headline_labels_that_clash_become_column_names():
    analyses = {
        "a": _analysis("a", headline={"v": "same", "w": "gap"}),
        "b": _analysis("b", headline={"v": "same", "u": "fine"}, report_order=1),
    }
    names = ["a.v", "a.w", "b.v", "b.u", "c.v"]
    assert headline_columns(names, analyses) == [
        ("b.v", "b.v"),
        ("b.u", "fine"),
        ("a.v", "a.v"),
        ("a.w", "a.w"),  # `gap` is a column of the table itself
    ]
    assert headline_columns(["a.z"], analyses) == []


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
