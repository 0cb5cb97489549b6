"""The older `probe train` options as an alias table a family declares (`ModelFamily.options`).

`--model-depth`, `--base-width`, `--target-params` and `--dropout` predate model
families. Core code names no family: each family says which of its parameters those
options set, and may give an arithmetic size estimate that refuses an absurd model
before torch is imported. simplecnn (the default) declares all four; here a third
party declares its own table, and every rule is checked on both.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_helpers import installed_with

import probe
from probe.datasets import CIFAR10_INPUT
from probe.errors import UsageError
from probe.training.config import TrainConfig, family_params
from probe.training.model import spec_from_config
from probe_plugins.simplecnn import param_count, width_for_params


@dataclasses.dataclass(frozen=True)
class GridParams:
    layers: int = probe.param(3, "Hidden layers.", min=1, max=64)
    units: int = probe.param(16, "Units per hidden layer.", min=1, max=1 << 20)
    bias: bool = probe.param(True, "Biases in the hidden layers.")


def grid_count(layers: int, units: int, inputs: int = 3 * 32 * 32, classes: int = 10) -> int:
    """Parameters of GridParams' MLP (with biases), by arithmetic."""
    return (
        inputs * units + units + (layers - 1) * (units * units + units) + units * classes + classes
    )


def units_for(target: int, params: GridParams) -> int:
    """The width whose MLP has about `target` parameters, at the other parameters' depth."""
    return min(range(1, 4097), key=lambda u: abs(grid_count(params.layers, u) - target))


def build_grid(params: GridParams, input: probe.InputSpec, num_classes: int):
    from torch import nn

    c, (h, w) = input.channels, input.size
    mods, n = [nn.Flatten()], c * h * w
    for _ in range(params.layers):
        mods += [nn.Linear(n, params.units, bias=params.bias), nn.ReLU()]
        n = params.units
    return nn.Sequential(*mods, nn.Linear(n, num_classes))


def estimate_grid(params: GridParams, batch_size: int) -> probe.SizeEstimate:
    n = grid_count(params.layers, params.units)
    return probe.SizeEstimate(
        parameters=n,
        train_bytes=16 * n + 4 * batch_size * params.layers * params.units * 1024,
        model=f"a {params.layers}-layer MLP of {params.units} units",
        param="units",
    )


GRID = probe.ModelFamily(
    name="grid",
    build=build_grid,
    params=GridParams,
    summary="An MLP whose depth and width the older options set.",
    options={
        "model_depth": "layers",
        "base_width": "units",
        "target_params": probe.OptionAlias("units", units_for),
    },  # no "dropout": grid refuses --dropout
    estimate=estimate_grid,
)


class GridPlugin:
    @probe.hookimpl
    def register_models(self, register):
        register(GRID)


@pytest.fixture
def grid(fresh_registry):
    """The installed plugins plus the grid family, as if its package were installed."""
    return installed_with(GridPlugin(), "grid", "grid-family")


def spec_params(**cfg) -> dict:
    return dict(spec_from_config(TrainConfig(**cfg), CIFAR10_INPUT, 10).params)


# --- the table -----------------------------------------------------------------------------------


def test_a_third_party_table_sets_its_own_parameters(grid) -> None:
    # the options' values, defaults included, set what the table names; the rest keep the family's
    assert spec_params(model="grid") == {"layers": 4, "units": 32, "bias": True}
    assert spec_params(model="grid", model_depth=8, base_width=100) == {
        "layers": 8,
        "units": 100,
        "bias": True,
    }
    # --model-param sets the parameters no option names, and named ones whose option is default
    assert spec_params(model="grid", model_params=("bias=false", "layers=2")) == {
        "layers": 2,
        "units": 32,
        "bias": False,
    }


def test_a_computed_alias_sees_the_other_parameters(grid) -> None:
    # the width for a target count is computed at the depth the other options or --model-param give
    for extra, depth in (({}, 4), ({"model_depth": 2}, 2), ({"model_params": ("layers=6",)}, 6)):
        p = spec_params(model="grid", target_params=300_000, **extra)
        assert p["layers"] == depth
        assert p["units"] == units_for(300_000, GridParams(layers=depth))
        miss = abs(grid_count(depth, p["units"]) - 300_000)  # no other width comes closer
        assert all(
            abs(grid_count(depth, u) - 300_000) >= miss for u in (p["units"] - 1, p["units"] + 1)
        )
    # it applies after the plain alias of the same parameter: --target-params wins over --base-width
    assert spec_params(model="grid", base_width=7, target_params=300_000)["units"] == units_for(
        300_000, GridParams(layers=4)
    )


@pytest.mark.parametrize(
    ("cfg", "option", "message"),
    [
        (
            {"model_depth": 8, "model_params": ("layers=2",)},
            "--model-param",
            "layers is also set by --model-depth; give it one way",
        ),
        (
            {"target_params": 10_000, "model_params": ("units=5",)},
            "--model-param",
            "units is also set by --target-params; give it one way",
        ),
        (
            {"dropout": 0.5},
            "--dropout",
            "applies to --model simplecnn only; give grid's parameters with --model-param "
            "KEY=VALUE (see `probe models`)",
        ),
    ],
)
def test_conflicts_and_options_a_family_does_not_take(grid, cfg, option, message) -> None:
    with pytest.raises(UsageError) as e:
        spec_params(model="grid", **cfg)
    assert str(e.value) == f"{option}: {message}"


def test_the_refusal_names_every_family_that_takes_the_option(grid) -> None:
    with pytest.raises(UsageError) as e:
        spec_params(model="resnet", model_depth=8)
    assert str(e.value) == (
        "--model-depth: applies to --model grid or --model simplecnn only; give resnet's "
        "parameters with --model-param KEY=VALUE (see `probe models`)"
    )


def test_simplecnn_declares_the_legacy_mapping() -> None:
    """The default family's table gives exactly what the flags always meant."""
    for depth in (2, 4, 8):
        for width, dropout in ((7, 0.0), (64, 0.3)):
            assert spec_params(model_depth=depth, base_width=width, dropout=dropout) == {
                "depth": depth,
                "base_width": width,
                "dropout": dropout,
                "hidden": 256,
            }
        target = spec_params(model_depth=depth, target_params=150_000)
        assert target["base_width"] == width_for_params(depth, 150_000)
    # --model-param depth=N is the depth --target-params sizes the width for
    p = spec_params(model_params=("depth=8",), target_params=150_000)
    assert p["depth"] == 8 and p["base_width"] == width_for_params(8, 150_000)
    fam = probe.contract.families.get_family("simplecnn")
    assert family_params(TrainConfig(), fam) == {"depth": 4, "base_width": 32, "dropout": 0.0}


# --- the estimate ---------------------------------------------------------------------------------


def test_a_family_estimate_refuses_before_the_data_set_is_loaded(grid) -> None:
    with pytest.raises(UsageError) as e:
        TrainConfig(model="grid", base_width=60_000)
    n = grid_count(4, 60_000)
    assert str(e.value) == (
        f"--base-width: a 4-layer MLP of 60000 units has {n:,} parameters, more than the "
        f"2,147,483,648 probe allows; use a smaller --base-width"
    )
    # with --model-param the model is sized on the meta device instead, once the data is known
    TrainConfig(model="grid", base_width=60_000, model_params=("bias=false",))


@pytest.mark.parametrize(
    ("sized_by", "option"),
    [({"base_width": 300}, "--base-width"), ({"target_params": 10**6}, "--target-params")],
)
def test_the_refusal_names_the_option_that_set_the_parameter(grid, sized_by, option) -> None:
    units = 300 if "base_width" in sized_by else units_for(10**6, GridParams(layers=4))
    need = estimate_grid(GridParams(layers=4, units=units), 16_384).train_bytes
    with pytest.raises(UsageError) as e:
        TrainConfig(model="grid", batch_size=16_384, **sized_by)
    assert str(e.value) == (
        f"{option}: a 4-layer MLP of {units} units needs about {need / 2**30:,.0f} GiB to train at "
        f"batch size 16384, more than the 64 GiB probe allows; use a smaller {option} or batch size"
    )
    TrainConfig(model="grid", batch_size=1024, **sized_by)  # the same model at a batch that fits


def test_simplecnn_estimate_is_its_parameter_count() -> None:
    from probe.training.model import count_params, simplecnn_spec

    for depth, width in ((2, 3), (4, 32), (8, 7)):
        assert param_count(depth, width) == count_params(simplecnn_spec(depth, width))


def test_the_cost_check_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from probe.errors import UsageError\n"
        "from probe.training.config import TrainConfig\n"
        "try:\n"
        "    TrainConfig(base_width=60000)\n"
        "except UsageError as e:\n"
        "    assert str(e).startswith('--base-width: a depth-4 model of base width 60000'), e\n"
        "else:\n"
        "    raise SystemExit('not refused')\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the record's own checks ------------------------------------------------------------


def test_the_table_is_checked_when_the_family_is_made() -> None:
    kw = dict(name="bad", build=build_grid, params=GridParams, summary="x")
    assert probe.ModelFamily(**kw, options={"model_depth": "layers"}).options == {
        "model_depth": probe.OptionAlias("layers")
    }
    with pytest.raises(ValueError, match="option 'epochs' is not one of model_depth, base_width"):
        probe.ModelFamily(**kw, options={"epochs": "layers"})
    with pytest.raises(ValueError, match=r"option 'base_width' must name one of its parameters"):
        probe.ModelFamily(**kw, options={"base_width": "width"})
    with pytest.raises(ValueError, match="estimate must be callable"):
        probe.ModelFamily(**kw, estimate=3)


def test_make_tiny_run_passes_older_options_only_to_families_that_take_them(
    tmp_path: Path, grid
) -> None:
    from probe.rundir.run import Run
    from probe.testing import make_tiny_run

    run = make_tiny_run(tmp_path / "run", model="grid", epochs=1, model_depth=2)
    # TINY's base_width=4 went to the units, as --base-width 4 would
    assert dict(Run(run).load_checkpoint(1).spec.params) == {"layers": 2, "units": 4, "bias": True}
