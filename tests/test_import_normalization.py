"""The normalisation a model was trained with, given once (--mean/--std, mean=/std=/normalize=)
or assumed and said so; --val-size, --rename and torch files of any extension on import."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from probe.errors import ProbeError, RunFileError, UsageError
from probe.rundir.run import Run
from probe.testing import synthetic_dataset
from probe.training.importer import import_checkpoints, list_epochs, load_state
from probe.training.model import simplecnn_spec
from probe.training.normalization import ASSUMED_DATA, GIVEN, NormalizationAssumed

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # far from the synthetic set's statistics


def theirs(x_uint8: torch.Tensor) -> torch.Tensor:
    """The repository's own input pipeline: ToTensor, then Normalize(MEAN, STD)."""
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x_uint8.float() / 255.0 - m) / s


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny simplecnn trained a few steps on images normalised with MEAN/STD, its state dict
    saved per epoch as .th, .ckpt and (legacy torch format) .bin files."""
    ds = synthetic_dataset(seed=0)
    folder = tmp_path_factory.mktemp("theirs") / "ckpts"
    folder.mkdir()
    torch.manual_seed(0)
    net = simplecnn_spec(base_width=4).build()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    states = {}
    for epoch in range(3):
        if epoch:
            net.train()
            for start in range(0, 320, 64):
                x, y = ds.train_x[start : start + 64], ds.train_y[start : start + 64]
                opt.zero_grad()
                F.cross_entropy(net(theirs(x)), y).backward()
                opt.step()
        states[epoch] = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save(states[0], folder / "epoch_0.th")
    torch.save({"state_dict": states[1], "epoch": 1}, folder / "epoch_1.ckpt")
    torch.save(states[2], folder / "epoch_2.bin", _use_new_zipfile_serialization=False)
    return ds, folder, states


def reference(state: dict[str, torch.Tensor], ds) -> tuple[float, float]:
    """Their evaluation, in float64: the whole validation split, their normalisation."""
    net = simplecnn_spec(base_width=4).build().double()
    net.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    net.eval()
    with torch.no_grad():
        logits = net(theirs(ds.test_x).double())
    loss = F.cross_entropy(logits, ds.test_y).item()
    return loss, (logits.argmax(1) == ds.test_y).double().mean().item()


def _import(ds, folder: Path, run_dir: Path, notes: list[str], **kw) -> Path:
    """The trained folder imported as the tiny simplecnn it is; one-line notes to `notes`."""
    return import_checkpoints(
        folder,
        run_dir,
        "simplecnn",
        ds,
        model_params={"base_width": 4},
        probe_set_size=20,
        analysis_batch_size=16,
        device="cpu",
        note=notes.append,
        **kw,
    )


def test_an_import_with_their_normalisation_scores_what_their_evaluation_scores(
    trained, tmp_path: Path
) -> None:
    """The issue's acceptance test: --mean/--std make probe's val_acc/val_loss theirs."""
    ds, folder, states = trained
    notes: list[str] = []
    out = _import(ds, folder, tmp_path / "run", notes, mean=MEAN, std=STD)
    run = Run(out)
    assert notes == [] and run.epochs() == [0, 1, 2]
    assert run.config["train"]["normalization"] == GIVEN
    assert run.config["model_spec"]["input"]["mean"] == list(MEAN)
    rows = {m["epoch"]: m for m in run.metrics()}
    accs = set()
    for e, state in states.items():
        loss, acc = reference(state, ds)
        assert rows[e]["val_loss"] == pytest.approx(loss, rel=1e-4, abs=1e-5)
        assert rows[e]["val_acc"] == pytest.approx(acc, abs=1e-9)
        accs.add(acc)
        ck = run.load_checkpoint(e)
        assert ck.spec.mean == MEAN and ck.spec.std == STD
        for k, v in state.items():
            assert torch.equal(ck.model_state[k], v)
    assert len(accs) > 1  # training moved the model: the check compares something
    # every analysis's inputs: the stored batches normalise with the given values
    batch = run.analysis_batch()
    torch.testing.assert_close(batch.normalized(), theirs(batch.images), rtol=0, atol=1e-6)
    probe_set = run.probe_set()
    torch.testing.assert_close(probe_set.normalized(), theirs(probe_set.images), rtol=0, atol=1e-6)


def test_without_their_normalisation_the_assumption_is_one_line_and_scores_differ(
    trained, tmp_path: Path
) -> None:
    ds, folder, states = trained
    notes: list[str] = []
    out = _import(ds, folder, tmp_path / "run", notes)
    [line] = notes
    m = ",".join(f"{v:.4g}" for v in ds.mean)
    assert line.startswith(f"normalisation assumed: the data set's statistics (mean {m}, std")
    assert line.endswith("give them with --mean R,G,B --std R,G,B") and "\n" not in line
    run = Run(out)
    assert run.config["train"]["normalization"] == ASSUMED_DATA
    loss, _ = reference(states[2], ds)
    assert run.metrics()[-1]["val_loss"] != pytest.approx(loss, rel=1e-3)


def test_the_cli_takes_mean_std_and_val_size_and_says_an_assumption(
    trained, tmp_path: Path
) -> None:
    from click.testing import CliRunner
    from test_import import import_args

    from probe.cli import cli

    _, folder, _ = trained
    args = import_args(tmp_path, folder, tmp_path / "run")
    res = CliRunner().invoke(cli, [*args, "--quiet"])
    assert res.exit_code == 0, res.output
    [line] = [s for s in res.output.splitlines() if "normalisation" in s]
    assert line.startswith("normalisation assumed: the data set's statistics (mean ")
    res = CliRunner().invoke(
        cli,
        [*args, "--force", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--val-size", "15"],
    )
    assert res.exit_code == 0, res.output
    assert "normalisation assumed" not in res.output
    run = Run(tmp_path / "run")
    assert run.config["train"]["normalization"] == GIVEN
    assert (
        run.config["train"]["val_size"] == 15
        and run.config["model_spec"]["input"]["std"] == [0.25] * 3
    )
    for extra, match in (
        (["--mean", "0.5,0.5", "--std", "0.2,0.2"], r"mean: 2 value\(s\) for 3-channel images"),
        (["--mean", "0.5,0.5,0.5", "--std", "0.2,0,0.2"], r"--std: std must be positive"),
        (["--mean", "0.5,nan,0.5", "--std", "1,1,1"], r"--mean: values must be finite"),
        (["--mean", "0.5,0.5,0.5"], r"std: give mean and std together"),
        (["--mean", "a,b,c", "--std", "1,1,1"], r"--mean: expected comma-separated numbers"),
        (["--val-size", "5"], r"--val-size: must be >= --probe-set-size \(10\), got 5"),
        (["--rename", "=fc."], r"--rename: expected OLD=NEW with a non-empty OLD prefix"),
    ):
        res = CliRunner().invoke(cli, [*args, "--force", *extra])
        assert res.exit_code != 0, extra
        [out_line] = res.output.strip().splitlines()
        assert out_line.startswith("error: ") and re.search(match, out_line), (extra, out_line)
    res = CliRunner().invoke(cli, ["import", "--help"])
    text = " ".join(res.output.split())
    for words in ("--mean R,G,B", "--std R,G,B", "--val-size", "--rename OLD=NEW", ".th, .ckpt"):
        assert words in text


def test_the_recorder_takes_mean_std_or_a_torchvision_normalize(tmp_path: Path) -> None:
    from torchvision.transforms import Normalize

    from probe import Recorder

    ds = synthetic_dataset(seed=0)
    kw = {"model_params": {"base_width": 4}, "probe_set_size": 20, "device": "cpu"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = Recorder(tmp_path / "a", "simplecnn", ds, normalize=Normalize(MEAN, STD), **kw)
    assert rec.spec.mean == MEAN and rec.spec.std == STD
    assert rec.plan.train["normalization"] == GIVEN
    net = rec.spec.build()
    row = rec.record(0, net)
    rec.close()
    net.eval()
    with torch.no_grad():
        logits = net(theirs(ds.test_x))
    assert row["val_loss"] == pytest.approx(F.cross_entropy(logits, ds.test_y).item(), rel=1e-5)
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (
        cfg["train"]["normalization"] == "given" and cfg["model_spec"]["input"]["mean"] == [0.5] * 3
    )

    with pytest.warns(
        NormalizationAssumed, match=r"^normalisation assumed: the data set's statistics"
    ):
        rec = Recorder(tmp_path / "b", "simplecnn", ds, **kw)
    assert rec.plan.train["normalization"] == ASSUMED_DATA
    rec.close()
    for bad, match in (
        ({"normalize": Normalize(MEAN, STD, inplace=True)}, r"normalize: an inplace Normalize"),
        ({"normalize": Normalize((0.5,), (0.2,))}, r"normalize: 1 value\(s\) for 3-channel"),
        ({"mean": MEAN, "std": (0.2, -1.0, 0.2)}, r"std: std must be positive"),
        ({"mean": (0.5, float("inf"), 0.5), "std": STD}, r"mean: values must be finite"),
        ({"normalize": Normalize(MEAN, STD), "mean": MEAN}, r"normalize= or mean= and std="),
        ({"normalize": "imagenet"}, r"expected a torchvision.transforms.Normalize"),
    ):
        with pytest.raises(UsageError, match=match) as info:
            Recorder(tmp_path / "c", "simplecnn", ds, **kw, **bad)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "c").exists()
    # a ModelSpec's own input counts as given, and mean/std replace it
    spec = simplecnn_spec(base_width=4)
    rec = Recorder(tmp_path / "d", spec, ds, mean=MEAN, std=STD, **{**kw, "model_params": None})
    assert rec.spec.mean == MEAN and rec.spec.params == spec.params
    rec.close()


def test_the_report_says_the_normalisation_and_what_an_import_s_time_is(
    trained, tmp_path: Path
) -> None:
    from probe.report.views import _cards

    ds, folder, _ = trained
    out = import_checkpoints(
        folder,
        tmp_path / "run",
        "simplecnn",
        ds,
        model_params={"base_width": 4},
        probe_set_size=20,
        analysis_batch_size=16,
        device="cpu",
        note=lambda s: None,
    )
    run = Run(out)
    cards = dict(_cards(run.config, run.metrics(), run.epochs()))
    assert "train time" not in cards and "import time (validation and dumps)" in cards
    m = ",".join(f"{v:.4g}" for v in ds.mean)
    assert cards["input normalisation"].startswith(f"assumed: data set statistics (mean {m}, std ")


def test_rename_maps_key_prefixes_and_a_near_fit_suggests_the_rename(
    trained, tmp_path: Path
) -> None:
    ds, _, states = trained
    spec = simplecnn_spec(base_width=4)
    head = sorted({k.rpartition(".")[0] for k in states[0] if k.startswith("classifier")})
    assert head, sorted(states[0])  # the family's names this test renames
    prefix = head[-1] + "."
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for e in (0, 1):
        torch.save(
            {
                (("linear." + k[len(prefix) :]) if k.startswith(prefix) else k): v
                for k, v in states[e].items()
            },
            folder / f"epoch_{e}.pt",
        )
    kw = {"probe_set_size": 20, "analysis_batch_size": 16, "device": "cpu", "note": lambda s: 0}
    with pytest.raises(RunFileError) as info:
        import_checkpoints(folder, tmp_path / "run", spec, ds, **kw)
    text = str(info.value)
    assert "\n" not in text and text.endswith(f": try --rename linear.={prefix}")
    assert f"missing {prefix}" in text and "unexpected linear." in text
    assert not (tmp_path / "run").exists()
    out = import_checkpoints(folder, tmp_path / "run", spec, ds, rename=[f"linear.={prefix}"], **kw)
    for e in (0, 1):
        ck = Run(out).load_checkpoint(e)
        assert all(torch.equal(ck.model_state[k], v) for k, v in states[e].items())
    # two keys renamed onto one: refused, naming both
    with pytest.raises(RunFileError, match=r"--rename maps both .* to "):
        import_checkpoints(folder, tmp_path / "r2", spec, ds, rename=[f"linear.={head[0]}."], **kw)
    with pytest.raises(UsageError, match=r"'linear.' is renamed twice"):
        import_checkpoints(
            folder, tmp_path / "r2", spec, ds, rename=["linear.=a.", "linear.=b."], **kw
        )


def test_torch_files_of_any_extension_load_weights_only_and_other_files_are_refused(
    trained, tmp_path: Path
) -> None:
    import pickle

    from safetensors.torch import save_file

    _, folder, states = trained
    assert list(list_epochs(folder)) == [0, 1, 2]
    for name, e in (("epoch_0.th", 0), ("epoch_1.ckpt", 1), ("epoch_2.bin", 2)):
        got = load_state(folder / name)
        assert all(torch.equal(got[k], v) for k, v in states[e].items())
    other = tmp_path / "other"
    other.mkdir()
    save_file({"w": torch.ones(2)}, str(other / "weights_3.bin"))  # safetensors, by its header
    assert torch.equal(load_state(other / "weights_3.bin")["w"], torch.ones(2))

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"w": Evil()}, other / "epoch_4.tar")
    with pytest.raises(RunFileError, match=r"epoch_4.tar: refused: it holds something other"):
        load_state(other / "epoch_4.tar")
    with open(other / "epoch_5.ckpt", "wb") as fh:
        pickle.dump({"w": Evil()}, fh)
    with pytest.raises(RunFileError, match=r"epoch_5.ckpt: refused: it holds something other"):
        load_state(other / "epoch_5.ckpt")
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"w": torch.zeros(2)}, bad / "epoch_0.ckpt")
    (bad / "epoch_1.ckpt").write_text("not a checkpoint")
    with pytest.raises(ProbeError, match=r"epoch_1.ckpt: not a checkpoint file: neither a torch"):
        list_epochs(bad)
    with pytest.raises(RunFileError, match=r"epoch_1.ckpt: neither a torch file"):
        load_state(bad / "epoch_1.ckpt")
    (bad / "epoch_1.ckpt").unlink()
    (bad / "epoch_1.ckpt").symlink_to(bad / "epoch_0.ckpt")
    with pytest.raises(ProbeError, match=r"epoch_1.ckpt: not a checkpoint file \(a link\)"):
        list_epochs(bad)
    (bad / "epoch_1.ckpt").unlink()
    (bad / "epoch_1.ckpt").mkdir()
    with pytest.raises(ProbeError, match=r"not a checkpoint file \(not a regular file\)"):
        list_epochs(bad)
