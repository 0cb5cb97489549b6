"""Issue 7.3/7.4: damaged inputs get a one-line error naming the file, and no file runs code.

Truncated, zero-length, bit-flipped and wrong-format checkpoints and activation dumps,
a checkpoint whose tensors do not fit its model spec, a metrics file with a torn or
garbled line, configs of the wrong type: each is one line naming the file, never a
traceback, and the other epochs still analyse. Hypothesis generates the damage.
A pickle (or a torch.save file) planted where a checkpoint should be is refused
without being executed, and no source file of probe can unpickle.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from reliability_helpers import (
    copy_of,
    install_test_plugins,
    one_torch_thread,  # noqa: F401 (an autouse fixture)
    probe_cli,
    train_small,
)
from safetensors.torch import load_file, save_file

import probe
from probe.contract.registry import reset_registry
from probe.errors import ProbeError, RunFileError
from probe.rundir import activations, checkpoint
from probe.rundir.run import Run
from probe.training.config import from_dict

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Epochs 0, 1, 2, with `curves` computed (it reads metrics.jsonl only: damage
    elsewhere leaves it cached)."""
    run_dir = train_small(tmp_path_factory.mktemp("damage") / "run")
    install_test_plugins()
    assert probe_cli("analyze", run_dir, "-p", "curves").exit_code == 0
    reset_registry(None)
    return run_dir


@pytest.fixture
def run_dir(template: Path, tmp_path: Path) -> Path:
    return copy_of(template, tmp_path)


@pytest.fixture(autouse=True)
def plugins():
    yield install_test_plugins()
    reset_registry(None)


def assert_names_file(exc: BaseException, path: Path) -> None:
    text = str(exc)
    assert text.startswith(f"{path}: "), text
    assert "\n" not in text, text


def read_whole_dump(path: Path) -> dict[str, np.ndarray]:
    info = activations.read(path)
    out = {layer: activations.read(path, layer) for layer in info["layers"]}
    out["logits"] = activations.read(path, None, "logits")
    return out


def analyze_all_epochs(run_dir: Path, damaged: Path) -> None:
    """`peek` fails on the damaged epoch only, with one line naming the file;
    `curves` still answers."""
    result = probe_cli("analyze", run_dir, "-p", "peek", "-p", "curves", "-e", "all")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    failures = [line for line in result.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failures) == 1, result.output
    assert failures[0].startswith(f"FAILED peek epoch 1: {damaged}: "), failures
    assert "2 computed, 1 cached, 1 failed" in result.stdout, result.output  # peek 0 and 2; curves


# --- checkpoints ----------------------------------------------------------------------------------


def _spec_mismatch(path: Path) -> None:
    """A validly signed checkpoint whose spec says width 8 while its tensors are width 4."""
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    spec = json.loads(meta["model_spec"])
    meta["model_spec"] = json.dumps({**spec, "base_width": 8}, sort_keys=True)
    meta["content_sha256"] = checkpoint._digest(tensors, meta)
    save_file(tensors, str(path), metadata=meta)


def _missing_tensor(path: Path) -> None:
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    del tensors["model/classifier.5.weight"]
    meta["content_sha256"] = checkpoint._digest(tensors, meta)
    save_file(tensors, str(path), metadata=meta)


def _other_safetensors(path: Path) -> None:
    save_file({"x": torch.zeros(3)}, str(path))


def _an_hdf5_file(path: Path) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)


CHECKPOINT_DAMAGE = {
    "zero-length": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "truncated-header": lambda p: p.write_bytes(p.read_bytes()[:5]),
    "bit-flip-in-data": lambda p: _flip(p, p.stat().st_size * 8 - 100),
    "bit-flip-in-metadata": lambda p: _flip(
        p, p.read_bytes().index(b'"epoch":"1"') * 8 + 8 * 9
    ),  # 1 -> 0
    "json-file": lambda p: p.write_text('{"model": [1, 2, 3]}'),
    "random-bytes": lambda p: p.write_bytes(os.urandom(4096)),
    "other-safetensors": _other_safetensors,
    "hdf5-file": _an_hdf5_file,
    "spec-mismatch": _spec_mismatch,
    "missing-tensor": _missing_tensor,
}


def _flip(path: Path, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", sorted(CHECKPOINT_DAMAGE))
def test_damaged_checkpoint_is_one_line_naming_it_and_other_epochs_analyse(
    run_dir: Path, damage: str
) -> None:
    path = Run(run_dir).checkpoint_path(1)
    CHECKPOINT_DAMAGE[damage](path)
    with pytest.raises(RunFileError) as info:
        probe.load_model(path)
    assert_names_file(info.value, path)
    analyze_all_epochs(run_dir, path)


def test_resume_skips_a_damaged_last_checkpoint(
    run_dir: Path, template: Path, tmp_path: Path
) -> None:
    """Resume continues from the newest checkpoint that verifies, and ends as
    an uninterrupted run."""
    from reliability_helpers import SMALL

    from probe.testing import synthetic_dataset
    from probe.training.config import TrainConfig
    from probe.training.loop import train

    path = Run(run_dir).checkpoint_path(2)
    _flip(path, path.stat().st_size * 8 - 9)
    log: list[str] = []
    cfg = TrainConfig(**SMALL)
    train(
        run_dir,
        cfg,
        resume=True,
        log=log.append,
        dataset=synthetic_dataset(n_train=80, n_test=40, seed=cfg.seed),
    )
    assert any(line.startswith(f"warning: {path}: checksum mismatch") for line in log), log
    want, got = load_file(str(Run(template).checkpoint_path(2))), load_file(str(path))
    assert sorted(want) == sorted(got) and all(torch.equal(want[k], got[k]) for k in want)


@SETTINGS
@given(bit=st.integers(min_value=0))
def test_any_bit_flip_in_a_checkpoint_is_detected(template: Path, tmp_path: Path, bit: int) -> None:
    src = Run(template).checkpoint_path(1)
    path = tmp_path / "epoch_0001.safetensors"
    data = bytearray(src.read_bytes())
    bit %= len(data) * 8
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))
    with pytest.raises(RunFileError) as info:
        checkpoint.load(path).build_model()
    assert_names_file(info.value, path)


@SETTINGS
@given(data=st.data())
def test_any_truncation_or_garbage_checkpoint_is_refused(
    template: Path, tmp_path: Path, data: st.DataObject
) -> None:
    original = Run(template).checkpoint_path(1).read_bytes()
    content = data.draw(
        st.one_of(
            st.integers(0, len(original) - 1).map(lambda n: original[:n]),
            st.binary(max_size=2048),
            st.binary(min_size=8, max_size=64).map(lambda head: head + original[len(head) :]),
        )
    )
    path = tmp_path / "epoch_0001.safetensors"
    path.write_bytes(content)
    with pytest.raises(RunFileError) as info:
        checkpoint.load(path).build_model()
    assert_names_file(info.value, path)


# --- activation dumps -----------------------------------------------------------------------------

DUMP_DAMAGE = {
    "zero-length": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3]),
    "bit-flip": lambda p: _flip(p, p.stat().st_size * 4),
    "bit-flip-in-checksum": lambda p: _flip(p, len(activations._SEAL) * 8 + 3),
    "hdf5-without-checksum": _an_hdf5_file,
    "safetensors-file": _other_safetensors,
    "text-file": lambda p: p.write_text("not a dump\n"),
}


@pytest.mark.parametrize("damage", sorted(DUMP_DAMAGE))
def test_damaged_dump_is_one_line_naming_it_and_other_epochs_analyse(
    run_dir: Path, damage: str
) -> None:
    path = Run(run_dir).activations_path(1)
    DUMP_DAMAGE[damage](path)
    with pytest.raises(RunFileError) as info:
        read_whole_dump(path)
    assert_names_file(info.value, path)
    analyze_all_epochs(run_dir, path)


@SETTINGS
@given(data=st.data())
def test_any_damaged_dump_is_refused_or_reads_the_same(
    template: Path, tmp_path: Path, data: st.DataObject
) -> None:
    """A flip, a truncation or garbage: an error naming the file, or (a flip in
    padding) the same numbers."""
    src = Run(template).activations_path(1)
    original = src.read_bytes()
    flip = data.draw(st.integers(0, len(original) * 8 - 1))
    flipped = bytearray(original)
    flipped[flip // 8] ^= 1 << (flip % 8)
    content = data.draw(
        st.one_of(
            st.just(bytes(flipped)),
            st.integers(0, len(original) - 1).map(lambda n: original[:n]),
            st.binary(max_size=4096),
        )
    )
    path = tmp_path / "epoch_0001.h5"
    path.write_bytes(content)
    try:
        got = read_whole_dump(path)
    except RunFileError as exc:
        assert_names_file(exc, path)
        return
    want = read_whole_dump(src)
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)


# --- metrics --------------------------------------------------------------------------------------


def test_torn_last_metrics_line_is_skipped_and_curves_runs(run_dir: Path) -> None:
    path = run_dir / "metrics.jsonl"
    path.write_bytes(path.read_bytes()[:-40])
    assert [m["epoch"] for m in Run(run_dir).metrics()] == [0, 1]
    result = probe_cli("analyze", run_dir, "-p", "curves")
    assert result.exit_code == 0, result.output
    assert json.loads(
        next((run_dir / "analyses/curves/default/run").glob("manifest.json")).read_text()
    )["scalars"]


def test_garbled_metrics_line_is_one_line_naming_the_file(run_dir: Path) -> None:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:30] + "\x00garbage" + lines[1][30:]
    path.write_text("\n".join(lines) + "\n")
    result = probe_cli("analyze", run_dir, "-p", "curves", "-p", "peek", "-e", "all")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    failures = [line for line in result.stderr.splitlines() if line.startswith("FAILED")]
    assert failures == [f"FAILED curves (run): {path}: line 2 is not JSON"], result.output
    assert "3 computed" in result.stdout  # peek, every epoch


@SETTINGS
@given(
    content=st.one_of(
        st.binary(max_size=512),
        st.lists(
            st.one_of(
                st.text(max_size=40),
                st.builds(
                    json.dumps,
                    st.recursive(
                        st.none()
                        | st.booleans()
                        | st.integers()
                        | st.floats()
                        | st.text(max_size=5),
                        lambda kids: (
                            st.lists(kids, max_size=3)
                            | st.dictionaries(
                                st.sampled_from(["epoch", "val_acc", "x"]), kids, max_size=3
                            )
                        ),
                        max_leaves=6,
                    ),
                ),
            ),
            max_size=5,
        ).map(lambda lines: "\n".join(lines).encode()),
    )
)
def test_any_metrics_file_gives_records_or_an_error_naming_it(
    run_dir: Path, content: bytes
) -> None:
    path = run_dir / "metrics.jsonl"
    path.write_bytes(content)
    try:
        rows = Run(run_dir).metrics()
    except RunFileError as exc:
        assert_names_file(exc, path)
        return
    assert all(isinstance(r, dict) and type(r["epoch"]) is int for r in rows)


# --- configs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        "[1, 2]",
        '"train"',
        '{"train": 5}',
        '{"train": {"epochs": "three"}}',
        '{"train": {"optimizer": "Nesterov"}}',
        '{"train": {"no_such_key": 1}}',
        '{"train": {"lr": [0.1]}}',
        '{"train": {"full_maps": [1, 2]}}',
        "{not json",
    ],
)
def test_wrong_config_json_is_one_line_naming_it_and_analysis_still_runs(
    run_dir: Path, config: str
) -> None:
    path = run_dir / "config.json"
    path.write_text(config)
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    result = probe_cli("train", "--run-dir", run_dir, "--resume", "--quiet")
    assert result.exit_code in (1, 2), result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], (
        result.output
    )
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
    ok = probe_cli("analyze", run_dir, "-p", "curves", "-p", "peek", "-e", "all")
    assert ok.exit_code == 0, ok.output
    assert "3 computed, 1 cached, 0 failed" in ok.stdout, ok.output


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=8,
)
KEYS = st.sampled_from(
    [
        "epochs",
        "lr",
        "optimizer",
        "model_depth",
        "batch_size",
        "full_maps",
        "augment",
        "data",
        "dropout",
        "target_params",
        "seed",
        "nonsense",
    ]
)


@SETTINGS
@given(train=st.dictionaries(KEYS, JSON, max_size=4))
def test_any_stored_train_config_is_checked_or_refused_naming_the_file(
    tmp_path: Path, train: dict
) -> None:
    source = str(tmp_path / "config.json")
    try:
        cfg = from_dict(train, source)
    except ProbeError as exc:
        assert source in str(exc) and "\n" not in str(exc), exc
        return
    assert cfg.epochs >= 0 and cfg.lr > 0


@pytest.mark.parametrize(
    ("toml", "where"),
    [
        ('epochs = "three"', "epochs"),
        ("optimizer = 3", "optimizer"),
        ("model_depth = 5", "model_depth"),
        ("[train]\nlr = -1.0", "lr"),
        ("epochs = ", "not valid TOML"),
        ("bogus = 1", "bogus"),
    ],
)
def test_wrong_toml_config_is_one_line_naming_file_and_key(
    tmp_path: Path, toml: str, where: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    run_dir = tmp_path / "run"
    result = probe_cli(
        "train", "--run-dir", run_dir, "--config", config, "--data", tmp_path / "none"
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and str(config) in lines[0] and where in lines[0], result.output
    assert not run_dir.exists()


# --- no code from data ----------------------------------------------------------------------------


class Planted:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_planted_pickle_is_refused_not_executed(run_dir: Path, tmp_path: Path, how: str) -> None:
    marker = tmp_path / "code-ran"
    payload = {"model": Planted(marker)}
    for path in (Run(run_dir).checkpoint_path(1), Run(run_dir).activations_path(2)):
        if how == "pickle":
            path.write_bytes(pickle.dumps(payload))
        else:
            torch.save(payload, path)
    assert not marker.exists()
    ckpt = Run(run_dir).checkpoint_path(1)
    for load in (probe.load_model, probe.load_checkpoint, checkpoint.read_metadata):
        with pytest.raises(RunFileError) as info:
            load(ckpt)
        assert_names_file(info.value, ckpt)
    with pytest.raises(RunFileError) as info:
        read_whole_dump(Run(run_dir).activations_path(2))
    assert_names_file(info.value, Run(run_dir).activations_path(2))
    result = probe_cli("analyze", run_dir, "-p", "peek", "-p", "census", "-e", "all")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"FAILED peek epoch 1: {ckpt}: " in result.stderr
    assert f"FAILED census (run): {ckpt}: " in result.stderr
    assert not marker.exists()


UNPICKLING = re.compile(
    r"\bpickle\.loads?\b|\bUnpickler\b|\btorch\.load\b(?!\(.*weights_only=True)|allow_pickle\s*=\s*True|\bread_pickle\b|"
    r"\bjoblib\.load\b|\bdill\b|\bcloudpickle\b|\bshelve\b|\bmarshal\.loads?\b|weights_only\s*=\s*False"
)


def test_no_source_file_can_unpickle() -> None:
    """probe reads safetensors, HDF5, JSON and TOML; torch.load only with weights_only=True
    (`probe import`'s .pt files)."""
    offenders = []
    for folder in ("probe", "plugins"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if UNPICKLING.search(code):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
