"""probe.io.safeio: what it refuses (links, FIFOs, oversize, deep, huge integers), and
what it must not refuse.

The hostile-input table (test_reliability_hostile_inputs.py) drives these readers
through the command line; here Hypothesis checks the readers themselves: any text
is a value or one RunFileError naming the file, never another exception, and valid
probe-sized JSON (brackets inside strings included) reads back unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from probe.errors import RunFileError
from probe.io import safeio

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)


@SETTINGS
@given(value=JSON)
def test_probe_sized_json_reads_back_unchanged(tmp_path: Path, value) -> None:
    p = tmp_path / "v.json"
    p.write_text(json.dumps(value))
    assert safeio.read_json(p) == value


@SETTINGS
@given(
    text=st.text(alphabet='[]{}"\\:,0123456789 -e.atrufnl', max_size=400)
    | st.builds(
        lambda d, inner: "[" * d + inner + "]" * d,
        st.integers(0, 5000),
        st.sampled_from(["", "1", '"["', "9" * 60]),
    )
)
def test_any_text_is_a_value_or_one_line_naming_the_file(tmp_path: Path, text: str) -> None:
    p = tmp_path / "v.json"
    p.write_text(text)
    try:
        safeio.read_json(p)
    except RunFileError as exc:
        assert str(exc).startswith(f"{p}: ") and "\n" not in str(exc)


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path: Path) -> None:
    p = tmp_path / "v.json"
    p.write_text(json.dumps({"caption": "[" * 1000 + '\\"{' * 100}))
    assert safeio.read_json(p)["caption"].startswith("[[[")
    assert safeio.json_depth(json.dumps([[["]]]]]"]]])) == 3


def test_depth_and_digit_limits_are_exact(tmp_path: Path) -> None:
    p = tmp_path / "v.json"
    p.write_text("[" * 64 + "]" * 64)
    safeio.read_json(p)
    p.write_text("[" * 65 + "]" * 65)
    with pytest.raises(RunFileError, match="nested more than 64 levels deep"):
        safeio.read_json(p)
    p.write_text(f"[{'9' * 40}, -{'9' * 40}]")
    assert safeio.read_json(p)[0] == 10**40 - 1
    p.write_text(f"[-{'9' * 41}]")
    with pytest.raises(RunFileError, match="an integer of 41 digits"):
        safeio.read_json(p)


def test_jsonl_skips_only_a_torn_last_line(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text('{"epoch": 0}\n\n{"epoch": 1}\n{"epo')
    assert safeio.read_jsonl(p, numbered=True) == [(1, {"epoch": 0}), (3, {"epoch": 1})]
    p.write_text('{"epo\n{"epoch": 1}\n')
    with pytest.raises(RunFileError, match=r"line 1 is not JSON$"):
        safeio.read_jsonl(p)
    with pytest.raises(RunFileError, match=r"line 2 is not JSON$"):
        p.write_text('{"epoch": 0}\n{"epo')
        safeio.read_jsonl(p, skip_torn_tail=False)


def test_not_regular_files_are_refused_before_reading(tmp_path: Path) -> None:
    (tmp_path / "zero").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for name, what in (
        ("zero", "is a symbolic link"),
        ("fifo", "is a FIFO"),
        ("dir", "is a directory"),
    ):
        with pytest.raises(RunFileError, match=what):
            safeio.sha256_file(tmp_path / name)
    with pytest.raises(FileNotFoundError):  # MissingFileError is both
        safeio.read_bytes(tmp_path / "missing")
    with pytest.raises(RunFileError, match="does not exist"):
        safeio.read_json(tmp_path / "missing")


def test_size_limit_and_within(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "a.json").write_text("[1, 2]")
    with pytest.raises(RunFileError, match="is 6 bytes, more than the 5 allowed"):
        safeio.read_json(run / "a.json", max_bytes=5)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.json").write_text("[3]")
    (run / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RunFileError, match="lies outside .* through a symbolic link"):
        safeio.read_json(run / "sub" / "b.json", within=run)
    (run / "inner").mkdir()
    (run / "alias").symlink_to(run / "inner", target_is_directory=True)
    (run / "inner" / "c.json").write_text("[4]")
    assert safeio.read_json(run / "alias" / "c.json", within=run) == [
        4
    ]  # a link that stays inside is fine
    with safeio.regular_path(run / "a.json") as name:
        assert Path(name).read_text() == "[1, 2]"


def test_toml_bounds(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("a = 1\n[b]\nc = [1, [2, [3]]]\n")
    assert safeio.read_toml(p) == {"a": 1, "b": {"c": [1, [2, [3]]]}}
    for text, what in (
        ("a = " + "[" * 3000 + "]" * 3000, "nested more than 64"),
        (".".join(["k"] * 100) + " = 1", "nested more than 64"),
        ("a = " + "9" * 5000, "more than 40 digits"),
        ("a = [", "not valid TOML"),
    ):
        p.write_text(text)
        with pytest.raises(RunFileError, match=what):
            safeio.read_toml(p)


def test_a_sparse_file_is_refused_before_a_byte_is_read(tmp_path: Path) -> None:
    """4 KB on disk declaring 6 GB: refused from its stat alone (the issue: 86 s and 12 GB)."""
    p = tmp_path / "epoch_0002.safetensors"
    with open(p, "wb") as fh:
        fh.write(b"x" * 4096)
        fh.truncate(6_000_000_000)
    stored = os.stat(p).st_blocks * 512
    with pytest.raises(RunFileError) as info:
        safeio.sha256_file(p)
    assert str(info.value) == (
        f"{p}: declares 6,000,000,000 bytes but stores {stored:,} (a sparse file: "
        "not one probe writes)"
    )
    small = tmp_path / "small.bin"  # under the threshold: an ordinary (if sparse) small file
    with open(small, "wb") as fh:
        fh.truncate(1 << 20)
    assert len(safeio.sha256_file(small)) == 64


def test_a_checkpoint_is_bounded_by_what_its_model_can_hold(
    probe_run: Path, tmp_path: Path
) -> None:
    """A checkpoint whose file is larger than its spec's model (with optimizer state) can be is
    refused from its size before it is loaded or hashed."""
    from probe.rundir import checkpoint

    src = probe_run / "checkpoints" / "epoch_0002.safetensors"
    big = tmp_path / "epoch_0002.safetensors"
    bound = checkpoint.size_bound(checkpoint.load(src).spec)
    raw = src.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    extra = (bound - len(raw)) // 4 + 1  # one float32 tensor more than the model can hold
    header["model/extra"] = {
        "dtype": "F32",
        "shape": [extra],
        "data_offsets": [len(data), len(data) + 4 * extra],
    }
    text = json.dumps(header).encode()
    big.write_bytes(len(text).to_bytes(8, "little") + text + data + b"\0" * (4 * extra))
    size = big.stat().st_size
    assert size > bound
    with pytest.raises(RunFileError) as info:
        checkpoint.load(big)
    assert str(info.value) == (
        f"{big}: is {size:,} bytes, more than the {bound:,} allowed for this file"
    )
