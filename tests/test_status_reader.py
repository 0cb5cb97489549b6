"""One reader of a sweep's status.json (probe.rundir.readers.read_status) for `probe sweep`,
`probe compare` and `probe report` alike: bounded, shape-checked, each bad entry one warning."""

from __future__ import annotations

import json

from probe.rundir import readers
from probe.studies import rows, sweep
from probe.studies.sweep import STATUS_FILE, load_spec, plan

SPEC = """
name = "tiny"
[base]
epochs = 1
device = "cpu"
[grid]
lr = [0.01, 0.1]
"""


def test_sweep_and_compare_read_status_with_the_same_reader():
    assert sweep.read_status is readers.read_status and rows.read_status is readers.read_status


def test_sweep_keeps_well_formed_entries_and_warns_about_the_others(tmp_path, capsys):
    (tmp_path / "sweep.toml").write_text(SPEC)
    spec = load_spec(tmp_path / "sweep.toml")
    out = tmp_path / "out"
    out.mkdir()
    first, second = (p.name for p in spec.points())
    runs = {
        first: {"state": "done", "error": {"x": 1}},  # not a status: ignored, so run again
        second: {"state": "failed", "error": "boom", "traceback": "..."},
    }
    (out / STATUS_FILE).write_text(json.dumps({"format": sweep.FORMAT, "runs": runs}))
    done, todo, status = plan(spec, out)
    assert not done and [p.name for p in todo] == [first, second]
    assert status == {second: runs[second]}  # what a rerun writes back, with its traceback
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"warning: {out / STATUS_FILE}: the entry of {first!r} is not a status "
        "(state and error strings); ignored"
    ]


def test_a_status_file_over_its_bound_is_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "STATUS_LIMIT", 64)
    (tmp_path / STATUS_FILE).write_text(json.dumps({"runs": {"a": {"state": "failed" * 20}}}))
    warnings: list[str] = []
    assert readers.read_status(tmp_path, warnings.append) == {}
    size = (tmp_path / STATUS_FILE).stat().st_size
    assert warnings == [
        f"{tmp_path / STATUS_FILE}: is {size:,} bytes, more than the 64 allowed for this file; "
        "ignored"
    ]
    assert readers.read_status(tmp_path / "absent", warnings.append) == {} and len(warnings) == 1
