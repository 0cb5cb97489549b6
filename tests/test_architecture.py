"""The structure ARCHITECTURE.md describes, held against the code (measured by
tests/architecture.py).

Each test fails with the offending imports or modules listed, so a change that breaks a rule
says where.
"""

from __future__ import annotations

import architecture as A
import pytest

PROBE = A.read_tree(A.ROOT / A.PACKAGE, A.PACKAGE)
PLUGINS = A.read_tree(A.ROOT / A.PLUGINS, "probe_plugins", set(PROBE))


def test_no_import_cycle_in_probe() -> None:
    """Module-level and in-function imports both count: a lazy import still ties two modules."""
    assert A.cycles(PROBE) == []


def test_imports_point_down_the_layers() -> None:
    assert A.upward_imports(PROBE) == []


def test_every_probe_module_is_in_a_layer() -> None:
    assert [m for m in PROBE if A.layer_of(m) < 0] == []


def test_in_function_imports_only_keep_heavy_libraries_out_of_start_up() -> None:
    assert A.needless_function_imports(PROBE) == []


def test_plugins_import_only_the_public_api() -> None:
    """No private name, no private module, no probe module outside `probe.PUBLIC_MODULES`."""
    assert A.private_reach(PLUGINS, set(A.public_api_modules(PROBE))) == []


@pytest.mark.parametrize("most", [700])
def test_no_module_over_700_lines(most: int) -> None:
    assert sorted((m.name, m.lines) for m in PROBE.values() if m.lines > most) == []


def test_the_checker_sees_what_it_checks(tmp_path) -> None:
    """A cycle, an upward import and a private reach, planted in a tiny tree, are each found."""
    pkg = tmp_path / "probe"
    (pkg / "io").mkdir(parents=True)
    (pkg / "report").mkdir()
    (pkg / "__init__.py").write_text("PUBLIC_MODULES = ('io',)\n")
    (pkg / "io" / "__init__.py").write_text("")
    (pkg / "report" / "__init__.py").write_text("")
    (pkg / "io" / "a.py").write_text("from probe.report import b\n")  # upward, and half of a cycle
    (pkg / "report" / "b.py").write_text("def f():\n    from probe.io import a\n")
    mods = A.read_tree(pkg, "probe")
    assert A.cycles(mods) == [["probe.io.a", "probe.report.b"]]
    ups = A.upward_imports(mods)
    assert len(ups) == 1 and "probe.io.a (layer 1) imports probe.report.b (layer 10)" in ups[0]
    plug = tmp_path / "plugins"
    plug.mkdir()
    (plug / "p.py").write_text("from probe.io.a import _hidden\nfrom probe.report import b\n")
    reach = A.private_reach(A.read_tree(plug, "probe_plugins", set(mods)), {"probe", "probe.io"})
    assert any("private name probe.io.a._hidden" in r for r in reach)
    assert any("probe.report.b, which is not part of the public API" in r for r in reach)
