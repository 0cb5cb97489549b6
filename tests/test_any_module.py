"""Any nn.Module: a run of the user's own class (no family plugin) records, reads and analyses
without code; rebuilding it imports the class only when the user's command line or call says so.

The user's code is a tiny module written into a temporary folder and put on sys.path, as it
would be installed on another machine; the CLI runs through click's CliRunner.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import probe
from probe.contract.families import ModelSpec
from probe.errors import ProbeError, UsageError
from probe.testing import synthetic_dataset

PKG = "probe_anymod_user"  # the user's package: a name no other test imports

USER_CODE = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(self.flat(self.pool(torch.relu(self.bn(self.conv(x))))))


def make(width=4):
    return TinyNet(width)


class SevenOutputs(TinyNet):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 7)
"""

HOSTILE_CODE = """
from pathlib import Path
Path(__file__).with_name("IMPORTED").write_text("the run chose code to run")


def boom(**kwargs):
    raise RuntimeError("the hostile factory was called")
"""


@pytest.fixture(scope="module")
def user_code(tmp_path_factory: pytest.TempPathFactory):
    """The user's package on sys.path (and a hostile module beside it, never to be imported)."""
    root = tmp_path_factory.mktemp("usercode")
    (root / PKG).mkdir()
    (root / PKG / "__init__.py").write_text("")
    (root / PKG / "nets.py").write_text(textwrap.dedent(USER_CODE))
    (root / "probe_anymod_hostile.py").write_text(textwrap.dedent(HOSTILE_CODE))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield root
    for name in [m for m in sys.modules if m.startswith(PKG)]:
        del sys.modules[name]


def record(run_dir: Path, model_factory=None, epochs: int = 2) -> tuple[Path, dict]:
    """A run of the user's TinyNet (trained a few steps), and its state dict per epoch."""
    from probe_anymod_user.nets import TinyNet

    torch.manual_seed(0)
    ds = synthetic_dataset(n_train=64, n_test=40, size=8)
    model = TinyNet()
    states = {}
    with probe.Recorder(
        run_dir,
        model=model,
        dataset=ds,
        model_factory=model_factory,
        mean=ds.mean,
        std=ds.std,
        probe_set_size=20,
        analysis_batch_size=16,
        example_records=10,
        device="cpu",
    ) as rec:
        rec.record(0, model)
        states[0] = {k: v.clone() for k, v in model.state_dict().items()}
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x = ds.train_x[:32].float() / 255
        y = ds.train_y[:32]
        for e in range(1, epochs + 1):
            model.train()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            rec.record(e, model, opt, {"train_loss": 1.0})
            states[e] = {k: v.clone() for k, v in model.state_dict().items()}
    return run_dir, states


@pytest.fixture(scope="module")
def user_run(user_code: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run, _ = record(tmp_path_factory.mktemp("runs") / "mine")
    return run


def fresh_copy(run: Path, tmp_path: Path) -> Path:
    """The recorded run without any analysis results."""
    out = tmp_path / "copy"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("analyses", "logs"))
    return out


def cli(*args: str):
    from click.testing import CliRunner

    from probe.cli import cli as probe_cli

    return CliRunner().invoke(probe_cli, list(args))


def test_the_recorder_stores_the_layout_and_only_a_reference(user_code, user_run) -> None:
    from probe_anymod_user.nets import TinyNet

    spec = json.loads((user_run / "config.json").read_text())["model_spec"]
    assert spec["family"] == "module"
    assert spec["module"]["factory"] == f"{PKG}.nets:TinyNet"
    ref = TinyNet()
    want = [
        [k, str(v.dtype).removeprefix("torch."), list(v.shape)] for k, v in ref.state_dict().items()
    ]
    assert [e[:3] for e in spec["module"]["state"]] == want
    assert spec["module"]["layers"] == ["conv", "bn", "pool", "flat"]  # the penultimate last
    assert dict(spec["module"]["outputs"])["conv"] == [4, 8, 8]
    parsed = ModelSpec.from_dict(spec)
    assert parsed.is_module and parsed.num_params() == sum(p.numel() for p in ref.parameters())
    assert parsed.to_dict() == spec
    # every checkpoint reads from the layout alone: weights as recorded
    ck = probe.load_checkpoint(user_run / "checkpoints/epoch_0002.safetensors")
    assert ck.spec == parsed and set(ck.model_state) == set(ref.state_dict())


def test_recording_leaves_the_user_s_model_as_it_was(user_code, tmp_path: Path) -> None:
    from probe_anymod_user.nets import TinyNet

    torch.manual_seed(1)
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds = synthetic_dataset(n_train=32, n_test=20, size=8)
    rec = probe.Recorder(
        tmp_path / "r",
        model=model,
        dataset=ds,
        mean=ds.mean,
        std=ds.std,
        probe_set_size=10,
        analysis_batch_size=8,
        example_records=0,
        device="cpu",
    )
    rec.close()
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


def test_a_model_that_cannot_be_referenced_or_does_not_fit_is_refused(
    user_code, tmp_path: Path
) -> None:
    from probe_anymod_user.nets import SevenOutputs

    class Local(torch.nn.Module):  # inside a function: no name to import it by
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 8), torch.nn.ReLU()
            )
            self.fc = torch.nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.body(x))

    ds = synthetic_dataset(n_train=32, n_test=20, size=8)
    kw = dict(dataset=ds, mean=ds.mean, std=ds.std, probe_set_size=10, analysis_batch_size=8)
    kw["device"] = "cpu"
    with pytest.raises(UsageError, match="inside a function.*model_factory"):
        probe.Recorder(tmp_path / "a", model=Local(), **kw)
    rec = probe.Recorder(tmp_path / "b", model=Local(), model_factory=f"{PKG}.nets:make", **kw)
    assert rec.spec.module.factory == f"{PKG}.nets:make" and rec.layers == ["body"]
    rec.close()
    with pytest.raises(UsageError, match=r"gives outputs \[1, 7\] for one image, not \[1, 10\]"):
        probe.Recorder(tmp_path / "c", model=SevenOutputs(), **kw)
    with pytest.raises(UsageError, match="model_params"):
        probe.Recorder(tmp_path / "d", model=SevenOutputs(), model_params={"x": [1]}, **kw)
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_a_stored_spec_of_a_user_class_is_checked(user_run) -> None:
    spec = json.loads((user_run / "config.json").read_text())["model_spec"]
    bad = []
    for edit in (
        lambda d: d.pop("module"),  # family module without its layout
        lambda d: d.update(family="resnet"),  # a layout beside a family
        lambda d: d["module"].update(factory="os.system; rm -rf /"),
        lambda d: d["module"].update(factory="os"),
        lambda d: d["module"]["state"].__setitem__(0, ["conv.weight", "float32", [-1], True]),
        lambda d: d["module"]["state"].__setitem__(0, ["conv.weight", "object", [4], True]),
        lambda d: d["module"]["state"].append(d["module"]["state"][0]),  # a name twice
        lambda d: d["module"].update(state=[["w", "float32", [1], True]] * 20_001),
        lambda d: d["module"].update(layers=["nowhere"]),
        lambda d: d["module"].update(extra=1),
    ):
        d = json.loads(json.dumps(spec))
        edit(d)
        with pytest.raises(ValueError) as info:
            ModelSpec.from_dict(d)
        bad.append(str(info.value))
    assert len(bad) == 10 and all("\n" not in b for b in bad)


def test_weights_only_analyses_run_with_no_code_and_rebuilds_skip_naming_trust_code(
    user_code, user_run, tmp_path: Path
) -> None:
    run = fresh_copy(user_run, tmp_path)
    res = cli(
        "analyze", str(run), "-p", "curves", "-p", "rsm", "-p", "cka", "-p", "spectra",
        "-p", "filters", "-p", "neural-collapse", "-p", "forgetting", "-p", "interpolation",
        "-p", "gradient-noise", "--device", "cpu",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "7 computed" in res.output and "2 skipped" in res.output and "0 failed" in res.output
    skips = [line for line in res.output.splitlines() if line.startswith("skipped:")]
    assert len(skips) == 2 and all(f"--trust-code {PKG}" in line for line in skips)
    assert {line.split()[1] for line in skips} == {"interpolation", "gradient-noise"}
    # filters read the stored weights: exactly the stored first conv
    import h5py

    ck = probe.load_checkpoint(run / "checkpoints/epoch_0002.safetensors")

    with h5py.File(run / "analyses/filters/default/epoch_0002/filters.h5") as f:
        assert torch.equal(torch.from_numpy(f["weight"][()]), ck.model_state["conv.weight"])
    # the skip is a recorded one, answered from its record while nothing changed...
    again = cli("analyze", str(run), "-p", "interpolation", "--device", "cpu")
    assert again.exit_code == 0 and "--trust-code" in again.output
    assert (run / "analyses/interpolation/default/run.skipped.json").exists()
    # ...but not by a command that gives --trust-code: it runs
    trusted = cli(
        "analyze", str(run), "-p", "interpolation", "--trust-code", PKG, "--device", "cpu"
    )
    assert trusted.exit_code == 0, trusted.output
    assert "1 computed" in trusted.output


def test_trust_code_and_model_factory_give_the_same_numbers(
    user_code, user_run, tmp_path: Path
) -> None:
    from probe_anymod_user.nets import TinyNet

    a = fresh_copy(user_run, tmp_path / "a")
    b = fresh_copy(user_run, tmp_path / "b")
    res = cli("analyze", str(a), "-p", "gradient-noise", "--trust-code", PKG, "--device", "cpu")
    assert res.exit_code == 0 and "1 computed" in res.output, res.output
    via_cli = probe.Run(a).results("gradient-noise")[None]
    got = probe.analyze(b, ["gradient-noise"], model=TinyNet, device="cpu")
    assert [r.status for r in got] == ["ok"]
    assert got[0].json == via_cli.json and got[0].scalars == via_cli.scalars
    assert got[0].scalars  # numbers, not an empty record


def test_a_factory_of_other_shapes_and_a_reference_outside_the_trusted_module_are_refused(
    user_code, user_run, tmp_path: Path
) -> None:
    from probe_anymod_user.nets import TinyNet

    run = fresh_copy(user_run, tmp_path)
    with pytest.raises(ProbeError, match=r"does not fit the stored weights \(bn\.bias: stored"):
        probe.analyze(run, ["interpolation"], model=lambda: TinyNet(width=5), device="cpu")
    out = probe.analyze(
        run, ["interpolation"], model=lambda: TinyNet(width=5), device="cpu", raise_failures=False
    )
    assert out[0].status == "failed" and "does not fit the stored weights" in out[0].outcome.error
    res = cli("analyze", str(run), "-p", "interpolation", "--trust-code", "otherpkg")
    assert res.exit_code == 1
    assert (
        f"{PKG}.nets:TinyNet is outside --trust-code otherpkg; nothing was imported" in res.output
    )
    with pytest.raises(UsageError, match="--trust-code"):
        probe.analyze(run, ["interpolation"], trust_code=["not a module"])


def test_a_hostile_reference_is_never_imported_without_the_flag(user_code, tmp_path: Path) -> None:
    run, _ = record(tmp_path / "hostile", model_factory="probe_anymod_hostile:boom", epochs=1)
    spec = json.loads((run / "config.json").read_text())["model_spec"]
    assert spec["module"]["factory"] == "probe_anymod_hostile:boom"  # recorded, never called
    res = cli("analyze", str(run), "-p", "interpolation", "-p", "spectra")
    assert res.exit_code == 0 and "1 computed" in res.output and "1 skipped" in res.output
    assert "--trust-code probe_anymod_hostile" in res.output
    assert "probe_anymod_hostile" not in sys.modules and not (user_code / "IMPORTED").exists()
    res = cli("analyze", str(run), "-p", "interpolation", "--trust-code", PKG)
    assert (
        res.exit_code == 1 and "FAILED interpolation (run): the run's model factory" in res.output
    )
    assert "probe_anymod_hostile:boom is outside --trust-code" in res.output
    assert "probe_anymod_hostile" not in sys.modules and not (user_code / "IMPORTED").exists()
    # the control: the user's own --trust-code naming it does import it (and so the mark shows)
    res = cli("analyze", str(run), "-p", "interpolation", "--trust-code", "probe_anymod_hostile")
    assert res.exit_code == 1 and "the hostile factory was called" in res.output
    assert (user_code / "IMPORTED").exists()
    (user_code / "IMPORTED").unlink()
    del sys.modules["probe_anymod_hostile"]
    with pytest.raises(probe.Skip, match="--trust-code probe_anymod_hostile"):
        probe.Run(run).model(1)
    assert "probe_anymod_hostile" not in sys.modules


def test_probe_analyze_returns_what_the_cli_cached(user_code, user_run, tmp_path: Path) -> None:
    run = fresh_copy(user_run, tmp_path)
    res = cli("analyze", str(run), "-p", "spectra", "-p", "curves", "-e", "all", "--device", "cpu")
    assert res.exit_code == 0 and "4 computed" in res.output, res.output
    for _ in range(2):
        out = probe.analyze(run, ["spectra", "curves"], epochs="all", device="cpu")
        assert [(r.analysis, r.epoch, r.status) for r in out] == [
            ("spectra", 0, "cached"),
            ("spectra", 1, "cached"),
            ("spectra", 2, "cached"),
            ("curves", None, "cached"),
        ]
    for r in out:
        folder = (
            run
            / "analyses"
            / r.analysis
            / "default"
            / (f"epoch_{r.epoch:04d}" if r.epoch is not None else "run")
        )
        manifest = json.loads((folder / "manifest.json").read_text())
        assert r.scalars == manifest["scalars"]
        files = [f for f in manifest["files"] if f.endswith(".json")]
        assert r.json == {f[:-5]: json.loads((folder / f).read_text()) for f in files}
    assert probe.analyze is sys.modules["probe.analyze"]  # the old import path still imports
    from probe.analyze import run_analyses  # noqa: F401

    with pytest.raises(UsageError, match="nosuch"):
        probe.analyze(run, ["nosuch"])
    with pytest.raises(UsageError):
        probe.analyze(run, ["spectra"], params={"spectra": {"bins": 1}})
    # the notebook reader: metrics and the model given the factory
    from probe_anymod_user.nets import make

    rows = probe.Run(run).metrics()
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    model = probe.Run(run).model(2, factory=make)
    ck = probe.load_checkpoint(run / "checkpoints/epoch_0002.safetensors")
    assert all(torch.equal(v, ck.model_state[k]) for k, v in model.state_dict().items())


def test_import_with_a_model_factory(user_code, tmp_path: Path) -> None:
    from probe_anymod_user.nets import make
    from safetensors.torch import save_file

    from probe.testing import make_image_folder

    (tmp_path / "ckpts").mkdir()
    for e in (0, 1):
        torch.manual_seed(e)
        save_file(make(width=3).state_dict(), str(tmp_path / "ckpts" / f"ep{e}.safetensors"))
    images = make_image_folder(tmp_path / "imgs")
    common = [
        "import", str(tmp_path / "ckpts"), "--run-dir", str(tmp_path / "run"),
        "--model-factory", f"{PKG}.nets:make", "--model-param", "width=3",
        "--dataset", "folder", "--data", str(images), "--probe-set-size", "10",
        "--analysis-batch-size", "8", "--device", "cpu",
    ]  # fmt: skip
    res = cli(*common)
    assert res.exit_code == 2 and "--trust-code" in res.output  # names code: needs the flag
    assert not (tmp_path / "run").exists()
    res = cli(*common, "--trust-code", "elsewhere")
    assert res.exit_code != 0 and "outside --trust-code elsewhere" in res.output
    res = cli(*common, "--trust-code", PKG)
    assert res.exit_code == 0, res.output
    spec = json.loads((tmp_path / "run/config.json").read_text())["model_spec"]
    assert spec["family"] == "module" and spec["module"]["factory"] == f"{PKG}.nets:make"
    assert spec["params"] == {"width": 3}
    for e in (0, 1):
        ck = probe.load_checkpoint(tmp_path / f"run/checkpoints/epoch_{e:04d}.safetensors")
        torch.manual_seed(e)
        ref = make(width=3).state_dict()
        assert all(torch.equal(ck.model_state[k], v) for k, v in ref.items())
    # analysed with the stored kwargs: the factory is called as make(width=3)
    res = cli("analyze", str(tmp_path / "run"), "-p", "interpolation", "--trust-code", PKG)
    assert res.exit_code == 0 and "1 computed" in res.output, res.output


def test_probe_analyze_is_there_without_torch() -> None:
    import subprocess

    code = (
        "import sys, probe; f = probe.analyze; import probe.analyze as m; "
        "assert f is m and callable(f); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
