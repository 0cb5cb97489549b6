"""probe import: a folder of someone else's state dicts becomes a run directory; bad
folders are one line."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import pytest
import torch
from safetensors.torch import save_file

from probe.errors import ProbeError, RunFileError, UsageError
from probe.rundir import checkpoint
from probe.rundir.run import Run
from probe.testing import synthetic_dataset
from probe.training.importer import epoch_of, import_checkpoints, list_epochs


def export(run: Path, folder: Path) -> dict[int, dict[str, torch.Tensor]]:
    """The run's per-epoch model state dicts, written the ways other people's code writes them."""
    folder.mkdir()
    states = {
        e: checkpoint.load(run / f"checkpoints/epoch_{e:04d}.safetensors").model_state
        for e in (0, 1, 2)
    }
    save_file(states[0], str(folder / "init_0.safetensors"))  # epoch 0 from the last run of digits
    torch.save(
        {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in states[1].items()}, "note": "x"},
        folder / "resnet8-e0001.pt",
    )  # nested and DataParallel-prefixed
    torch.save({"model": states[2], "optimizer": {"lr": 0.1}}, folder / "model_e2.pth")
    return states


def test_an_imported_run_has_the_metrics_and_activations_of_the_original(
    probe_run: Path, tmp_path: Path
) -> None:
    export(probe_run, tmp_path / "ckpts")
    spec = checkpoint.load(probe_run / "checkpoints/epoch_0000.safetensors").spec
    out = import_checkpoints(
        tmp_path / "ckpts",
        tmp_path / "imported",
        spec,
        synthetic_dataset(seed=0),
        probe_set_size=40,
        analysis_batch_size=64,
        seed=0,
        device="cpu",
    )
    orig, imp = Run(probe_run), Run(out)
    assert imp.epochs() == [0, 1, 2]
    for a, b in zip(
        orig.metrics(), imp.metrics(), strict=True
    ):  # the same model on the same validation order
        assert (
            b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-6) and b["val_acc"] == a["val_acc"]
        )
        assert "train_loss" not in b
    for e in (0, 2):
        with h5py.File(orig.activations_path(e)) as f, h5py.File(imp.activations_path(e)) as g:
            for name in f["pooled"]:
                # probe train ran channels-last, import does not: the same values
                # up to float16 rounding
                a, b = (
                    torch.from_numpy(f["pooled"][name][()]),
                    torch.from_numpy(g["pooled"][name][()]),
                )
                torch.testing.assert_close(b.float(), a.float(), rtol=2e-3, atol=2e-3)
    assert torch.equal(orig.probe_set().images, imp.probe_set().images)
    assert torch.equal(orig.analysis_batch().indices, imp.analysis_batch().indices)
    ck = imp.load_checkpoint(1)
    assert not ck.optimizer_state and not ck.rng  # nothing to resume from
    src = imp.config["source"]
    assert src["kind"] == "import" and [f["file"] for f in src["files"]] == [
        "init_0.safetensors",
        "resnet8-e0001.pt",
        "model_e2.pth",
    ]
    assert imp.config["train"]["epochs"] == 2
    from probe.training.loop import train

    with pytest.raises(
        UsageError, match="made by `probe import`: its checkpoints carry no optimizer state"
    ):
        train(out, resume=True, quiet=True)


def test_epochs_from_file_names() -> None:
    assert [
        epoch_of(n)
        for n in (
            "epoch_3.pt",
            "ckpt-0003.safetensors",
            "model_e10.pth",
            "resnet20_7.PT",
            "final.pt",
            "v2-step-12.safetensors",
        )
    ] == [3, 3, 10, 7, None, 12]


def write_states(folder: Path, names: list[str], state: dict[str, torch.Tensor]) -> None:
    folder.mkdir(exist_ok=True)
    for n in names:
        if n.endswith(".safetensors"):
            save_file(state, str(folder / n))
        else:
            torch.save(state, folder / n)


@pytest.mark.parametrize(
    "names, match",
    [
        (
            ["epoch_0.pt", "epoch_1.pt", "epoch_3.pt"],
            r"epoch 2 is missing between epoch_0.pt and epoch_3.pt",
        ),
        (
            ["epoch_1.pt", "ckpt-0001.safetensors"],
            r"epoch_1.pt: epoch 1 again \(also ckpt-0001.safetensors\)",
        ),
        (["epoch_0.pt", "notes.txt"], r"notes.txt: not a checkpoint file"),
        (["epoch_0.pt", "final.pt"], r"final.pt: no epoch in its name"),
        (
            ["epoch_0.pt", "epoch_5000000.pt"],
            r"epoch 1 \(and 4,999,998 more\) is missing between epoch_0.pt and epoch_5000000.pt",
        ),
        (
            ["epoch_0.pt", "epoch_20000000.pt"],
            r"epoch_20000000.pt: epoch 20,000,000 is over the 10,000,000 epochs a run may hold",
        ),
        (
            ["epoch_99999999999999999999.pt"],
            r"epoch 99,999,999,999,999,999,999 is over the 10,000,000 epochs",
        ),
    ],
)
def test_bad_folders_are_one_line_naming_the_file_or_epoch(
    tmp_path: Path, names: list[str], match: str
) -> None:
    write_states(tmp_path / "ckpts", [n for n in names if n != "notes.txt"], {"w": torch.zeros(2)})
    if "notes.txt" in names:
        (tmp_path / "ckpts" / "notes.txt").write_text("hello")
    with pytest.raises(ProbeError, match=match) as info:
        list_epochs(tmp_path / "ckpts")
    assert "\n" not in str(info.value)


def import_tiny(folder: Path, out: Path, spec) -> Path:
    """import_checkpoints of `folder` into `out` on the synthetic data set, 40 probe images."""
    return import_checkpoints(
        folder, out, spec, synthetic_dataset(seed=0), probe_set_size=40, device="cpu"
    )


def test_a_state_dict_that_does_not_fit_and_a_pickle_write_nothing(
    probe_run: Path, tmp_path: Path
) -> None:
    spec = checkpoint.load(probe_run / "checkpoints/epoch_0000.safetensors").spec
    good = checkpoint.load(probe_run / "checkpoints/epoch_0000.safetensors").model_state
    bad = dict(good)
    first = sorted(bad)[0]
    del bad[first]
    bad["extra.weight"] = torch.zeros(3)
    write_states(tmp_path / "a", ["epoch_0.safetensors"], good)
    write_states(tmp_path / "a", ["epoch_1.pt"], bad)
    with pytest.raises(
        RunFileError,
        match=rf"epoch_1.pt: does not fit simplecnn\(.*missing {first}.*unexpected extra.weight",
    ):
        import_tiny(tmp_path / "a", tmp_path / "out", spec)
    assert not (tmp_path / "out").exists()

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    (tmp_path / "b").mkdir()
    with open(tmp_path / "b" / "epoch_0.pt", "wb") as fh:
        pickle.dump({"w": Evil()}, fh)
    with pytest.raises(
        RunFileError, match=r"epoch_0.pt: refused: it holds something other"
    ) as info:
        import_tiny(tmp_path / "b", tmp_path / "out", spec)
    assert not (tmp_path / "out").exists()
    # torch's reason is kept, its advice to load with weights_only=False is not
    assert "Unsupported operand" in str(info.value) and "weights_only" not in str(info.value)
    (tmp_path / "b" / "epoch_0.pt").unlink()
    torch.save({"w": Evil()}, tmp_path / "b" / "epoch_0.pt")  # a zip file naming builtins.print
    with pytest.raises(
        RunFileError,
        match=r"\(Unsupported global: GLOBAL print was not an allowed global by default\); probe",
    ) as info:
        import_tiny(tmp_path / "b", tmp_path / "out", spec)
    assert "weights_only" not in str(info.value) and "safe_globals" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_the_cli_imports_and_resume_is_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from probe.cli import cli
    from probe.training.model import simplecnn_spec

    spec = simplecnn_spec(base_width=4)
    (tmp_path / "ckpts").mkdir()
    for e in (1, 2):
        torch.manual_seed(e)
        save_file(spec.build().state_dict(), str(tmp_path / "ckpts" / f"ckpt-{e:04d}.safetensors"))
    run = tmp_path / "run"
    args = import_args(tmp_path, tmp_path / "ckpts", run)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert Run(run).epochs() == [
        1,
        2,
    ]  # no initialisation in the folder: the first file's epoch comes first
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0 and "already exists" in res.output
    res = CliRunner().invoke(cli, [*args, "--force"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["train", "--run-dir", str(run), "--resume"])
    assert (
        res.exit_code != 0
        and "carry no optimizer state" in res.output
        and "Traceback" not in res.output
    )
    assert len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(cli, ["import", "--help"])
    text = " ".join(res.output.split())
    assert "last run of digits" in text and "weights_only=True" in text


@pytest.mark.slow
def test_an_imported_run_passes_every_analysis_and_the_report(
    probe_run: Path, tmp_path: Path
) -> None:
    from test_recorder import analyze_and_report

    export(probe_run, tmp_path / "ckpts")
    spec = checkpoint.load(probe_run / "checkpoints/epoch_0000.safetensors").spec
    out = import_checkpoints(
        tmp_path / "ckpts",
        tmp_path / "imported",
        spec,
        synthetic_dataset(seed=0),
        probe_set_size=40,
        analysis_batch_size=64,
        device="cpu",
    )
    analyze_and_report(out)


def import_args(tmp_path: Path, folder: Path, run: Path) -> list[str]:
    from probe.testing import make_image_folder

    images = tmp_path / "imgs"
    if not images.exists():
        make_image_folder(images)
    return [
        "import",
        str(folder),
        "--run-dir",
        str(run),
        "--model",
        "simplecnn",
        "--model-param",
        "base_width=4",
        "--dataset",
        "folder",
        "--data",
        str(images),
        "--probe-set-size",
        "10",
        "--analysis-batch-size",
        "8",
        "--device",
        "cpu",
    ]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_importing_a_run_s_own_checkpoints_over_it_is_refused_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """`probe import R/checkpoints --run-dir R --force` once deleted the run it was reading."""
    from click.testing import CliRunner

    from probe.cli import cli
    from probe.training.model import simplecnn_spec

    spec = simplecnn_spec(base_width=4)
    (tmp_path / "ckpts").mkdir()
    for e in (0, 1):
        torch.manual_seed(e)
        save_file(spec.build().state_dict(), str(tmp_path / "ckpts" / f"epoch_{e}.safetensors"))
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, import_args(tmp_path, tmp_path / "ckpts", run))
    assert res.exit_code == 0, res.output
    before = tree(run)
    for source in (run / "checkpoints", run):
        res = CliRunner().invoke(cli, [*import_args(tmp_path, source, run), "--force"])
        assert res.exit_code == 2
        assert res.output.strip() == (
            f"error: FOLDER: {source} lies inside --run-dir {run}, which the import writes "
            "(--force replaces it): copy the checkpoints to a folder outside the run first"
        )
        assert tree(run) == before and Run(run).epochs() == [0, 1]


def test_an_untrusted_file_name_cannot_forge_a_line_or_drive_the_terminal(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from probe.cli import cli

    folder = tmp_path / "ckpts"
    write_states(folder, ["epoch_0.pt"], {"w": torch.zeros(2)})
    (folder / "bad\nerror: all good\x1b]0;owned\x07.txt").write_text("x")
    res = CliRunner().invoke(cli, import_args(tmp_path, folder, tmp_path / "run"))
    assert res.exit_code == 1
    [line] = res.output.strip().splitlines()
    assert "\x1b" not in line and "\x07" not in line
    assert "bad\\u000aerror: all good\\u001b]0;owned\\u0007.txt: not a checkpoint file" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "tensor, kind",
    [
        (torch.zeros(2, 3).to_sparse(), "sparse_coo"),
        (torch.empty(2, 3, device="meta"), "meta"),
    ],
    ids=["sparse", "meta"],
)
def test_a_sparse_or_meta_tensor_is_one_line_naming_the_entry(tmp_path: Path, tensor, kind) -> None:
    from probe.training.importer import load_state

    torch.save({"w": tensor}, tmp_path / "epoch_0.pt")
    with pytest.raises(RunFileError) as info:
        load_state(tmp_path / "epoch_0.pt")
    assert str(info.value) == (
        f"{tmp_path / 'epoch_0.pt'}: entry 'w' is a {kind} tensor, not a dense one with its values"
    )


def test_a_pt_file_whose_records_inflate_past_the_model_is_refused_before_loading(
    tmp_path: Path,
) -> None:
    """torch inflates compressed zip records under weights_only=True: the central directory's
    declared sizes are checked first (the issue: 2.9 MB inflating to 3 GB)."""
    import zipfile

    from probe.training.importer import load_state

    src = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(4)}, src)
    bomb = tmp_path / "epoch_0.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bomb, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, zin.read(item.filename))
        zout.writestr("plain/extra", b"\0" * (8 << 20), compress_type=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 1 << 20  # small on disk
    with pytest.raises(RunFileError) as info:
        load_state(bomb, 4 << 20)
    total = sum(i.file_size for i in zipfile.ZipFile(bomb).infolist())
    assert str(info.value) == (
        f"{bomb}: declares {total:,} bytes uncompressed, more than the 4,194,304 its model's "
        "state can take"
    )
    assert load_state(src, 4 << 20)["w"].shape == (4,)  # an ordinary file under the bound


def test_a_bad_last_file_is_found_before_any_file_is_loaded_in_full(
    probe_run: Path, tmp_path: Path, monkeypatch
) -> None:
    """Headers first (safetensors) or memory-mapped (.pt): the issue's 3,000-file folder loaded
    2,999 files (67 s) before refusing the last."""
    import safetensors.torch

    spec = checkpoint.load(probe_run / "checkpoints/epoch_0000.safetensors").spec
    good = checkpoint.load(probe_run / "checkpoints/epoch_0000.safetensors").model_state
    write_states(tmp_path / "a", [f"epoch_{e}.safetensors" for e in range(4)], good)
    write_states(tmp_path / "a", ["epoch_4.pt"], {**good, "extra": torch.zeros(1)})
    loads: list[str] = []
    real = safetensors.torch.load_file
    monkeypatch.setattr(
        safetensors.torch, "load_file", lambda p, *a, **k: loads.append(p) or real(p, *a, **k)
    )
    with pytest.raises(RunFileError, match=r"epoch_4.pt: does not fit .*unexpected extra"):
        import_tiny(tmp_path / "a", tmp_path / "out", spec)
    assert loads == [] and not (tmp_path / "out").exists()
