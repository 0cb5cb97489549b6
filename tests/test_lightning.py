"""probe.integrations.lightning.ProbeCallback: a real lightning.Trainer fit recorded as a run."""

from __future__ import annotations

from pathlib import Path

import lightning  # the dev extra installs it (make test): a missing one fails, never skips
import pytest
import torch
import torch.nn.functional as F

from probe.integrations.lightning import ProbeCallback, logged_scalars
from probe.rundir.run import Run
from probe.testing import synthetic_dataset
from probe.training.model import simplecnn_spec

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class Module(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = simplecnn_spec(base_width=4).build()
        self.seen: dict[int, dict[str, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        return self.net((x.float() / 255.0 - m) / s)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def on_train_epoch_end(self) -> None:  # the weights each epoch ends with, for the test
        self.seen[self.current_epoch + 1] = {
            k: v.detach().clone() for k, v in self.net.state_dict().items()
        }

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)


def _trainer(cb: ProbeCallback, epochs: int) -> lightning.Trainer:
    return lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb],
    )


def _loader(ds):
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(ds.train_x, ds.train_y), batch_size=64, shuffle=False
    )


def test_without_a_family_the_network_is_recorded_as_any_module(tmp_path: Path) -> None:
    ds = synthetic_dataset(seed=0)
    module = Module()
    cb = ProbeCallback(
        tmp_path / "run", dataset=ds, probe_set_size=20, analysis_batch_size=16,
        mean=MEAN, std=STD, model_attr="net", example_records=0,
    )  # fmt: skip
    _trainer(cb, 1).fit(module, _loader(ds))
    run = Run(tmp_path / "run")
    assert run.epochs() == [0, 1] and run.config["model_spec"]["family"] == "module"
    ck = run.load_checkpoint(1)
    assert all(torch.equal(ck.model_state[k], v) for k, v in module.seen[1].items())


def test_a_lightning_fit_is_recorded_epoch_by_epoch(tmp_path: Path) -> None:
    ds = synthetic_dataset(seed=0)
    loader = _loader(ds)
    module = Module()
    init = {k: v.clone() for k, v in module.net.state_dict().items()}
    cb = ProbeCallback(
        tmp_path / "run",
        model="simplecnn",
        model_params={"base_width": 4},
        dataset=ds,
        probe_set_size=20,
        analysis_batch_size=16,
        mean=MEAN,
        std=STD,
        model_attr="net",
    )
    _trainer(cb, 2).fit(module, loader)
    run = Run(tmp_path / "run")
    assert run.epochs() == [0, 1, 2] and cb.recorder is None  # closed at fit end
    module.seen[0] = init
    for e in (0, 1, 2):
        ck = run.load_checkpoint(e)
        assert all(torch.equal(ck.model_state[k], v) for k, v in module.seen[e].items())
        if e:
            assert ck.optimizer_state  # the trainer's optimizer was recorded
    assert not torch.equal(module.seen[2]["classifier.5.weight"], init["classifier.5.weight"])
    rows = run.metrics()
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert "train_loss" not in rows[0] and all(r["train_loss"] > 0 for r in rows[1:])
    assert rows[1]["lr"] == 0.05 and run.config["train"]["normalization"] == "given"
    # probe's validation is the module's own forward on the test split
    module.eval()
    with torch.no_grad():
        loss = F.cross_entropy(module(ds.test_x), ds.test_y).item()
    assert rows[2]["val_loss"] == pytest.approx(loss, rel=1e-5)


def test_only_finite_scalars_the_recorder_does_not_measure_are_passed_on() -> None:
    got = logged_scalars(
        {
            "train_loss": torch.tensor(0.5),
            "val_loss": torch.tensor(0.1),  # the recorder measures its own
            "bad": torch.tensor(float("nan")),
            "vec": torch.ones(3),
            "acc": 0.75,
            "flag": True,
        }
    )
    assert got == {"train_loss": 0.5, "acc": 0.75}
