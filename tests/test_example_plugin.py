"""A third-party plugin package, installed with pip, appears in probe without touching its code."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_example_plugin_installs_and_runs(probe_run, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "examples" / "probe-plugin-example"),
        ],
        check=True,
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]),
    }
    probe_cmd = [sys.executable, "-m", "probe.cli"]
    listing = subprocess.run(
        [*probe_cmd, "plugins"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "example [active] probe-plugin-example 0.1.0" in listing
    out = subprocess.run(
        [*probe_cmd, "analyze", str(probe_run), "--plugin", "example", "--epochs", "all"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    manifest = json.loads((probe_run / "analyses/example/default/run/manifest.json").read_text())
    assert manifest["provider"] == "probe-plugin-example" and manifest["epochs"] == [0, 1, 2]
    assert manifest["scalars"]["max_distance"] > 0
