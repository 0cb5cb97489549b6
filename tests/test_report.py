"""`probe report`: the run and sweep pages, their inputs digest, and a real headless browser.

The analyses here are registered in-process (plus the real `curves`), so the test
does not depend on which built-in analyses exist yet. The browser tests drive
Debian's Chromium through Selenium; outside CI they skip when it is not installed
(`.ci/install-browser.sh` installs it), in CI (CI=true) they fail instead.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import probe
from probe.cli import ProbeGroup
from probe.contract import registry as plugins
from probe.report.charts import Series as ChartSeries
from probe.report.charts import nice_ticks, svg_chart
from probe.report.command import report_command
from probe.report.digest import INDEX, REPORT_DIR, STAMP
from probe.report.views import analyze_command

CHROMIUM = os.environ.get("PROBE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PROBE_CHROMEDRIVER", "/usr/bin/chromedriver")


# --- in-process analyses --------------------------------------------------------------------------


def _figure(width: float, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, 1.6))
    ax.plot([0, 1], [0, 1])
    ax.set_title(title)
    return fig


def _demo(ctx) -> None:
    # A different width per epoch, so the browser can tell which epoch's image it shows.
    ctx.out.figure(
        "panel",
        _figure(2 + ctx.epoch, f"epoch {ctx.epoch}"),
        caption=f"Demo panel of epoch {ctx.epoch}.",
    )
    ctx.out.figure("plain", _figure(2, "plain"))
    ctx.out.json("extra", {"epoch": ctx.epoch})
    ctx.out.scalar("value", 1.5 * ctx.epoch)


def _sharp(ctx) -> None:
    ctx.out.figure("sharp", _figure(3, "sharpness"))
    ctx.out.scalar("sharpness", 0.25)


def _boom(ctx) -> None:
    if ctx.epoch == 2:
        raise ValueError("boom at the last epoch")
    ctx.out.scalar("ok", 1)


@probe.hookimpl
def _register(register) -> None:
    register(
        probe.Analysis(
            name="demo",
            run=_demo,
            scope="epoch",
            needs={"checkpoint"},
            summary="A figure per epoch.",
        )
    )
    register(
        probe.Analysis(
            name="sharpness",
            run=_sharp,
            scope="run",
            needs={"metrics"},
            summary="Stand-in sharpness.",
            caption="Loss increase under small weight perturbations of a given radius; lower "
            "means a flatter minimum, which often goes with better generalisation.",
        )
    )
    register(
        probe.Analysis(
            name="boom", run=_boom, scope="epoch", needs={"checkpoint"}, summary="Fails at epoch 2."
        )
    )
    register(
        probe.Analysis(
            name="never", run=_boom, scope="epoch", needs={"checkpoint"}, summary="Never run here."
        )
    )


@pytest.fixture
def registry(fresh_registry):
    from probe_plugins import curves

    reg = plugins.Registry()
    reg.register(curves, plugins.PluginInfo("curves", "probe_plugins.curves", "probe-cnn", "0"))
    reg.register(
        SimpleNamespace(register_analyses=_register),
        plugins.PluginInfo("test", "tests", "tests", "0"),
    )
    plugins.reset_registry(reg)
    return reg


def invoke(*args: object):
    group = ProbeGroup()
    group.add_command(report_command)
    return CliRunner().invoke(group, ["report", *map(str, args)])


def analysed(run: Path, reg) -> Path:
    from probe.analysis.runner import run_analyses

    run_analyses(run, ["curves", "sharpness"], None, registry=reg)
    run_analyses(run, ["demo", "boom"], "all", registry=reg)
    return run


# --- the run page ---------------------------------------------------------------------------------


def test_run_page_shows_config_curves_results_missing_and_failed(probe_run, registry):
    analysed(probe_run, registry)
    r = invoke(probe_run)
    assert r.exit_code == 0, r.output
    index = probe_run / REPORT_DIR / INDEX
    assert r.output.strip() == f"wrote {index}"
    page = index.read_text()
    # config and metric curves, drawn from the files without any analysis
    assert "SGD_mom" in page and '<svg class="chart"' in page and "val loss" in page
    # every figure: a relative path that exists, so the page works from disk
    import re

    srcs = set(re.findall(r'"src": "([^"]+)"', page)) | set(re.findall(r'<img src="([^"]+)"', page))
    assert any("demo/default/epoch_0000/panel.png" in s for s in srcs)
    for src in srcs:
        assert not src.startswith(("http:", "https:", "/")), src
        assert (index.parent / src).resolve().is_file(), src
    # captions: the manifest's own, the analysis's declared one, the generic one
    assert "Demo panel of epoch 1." in page
    assert (
        "Loss, accuracy, gradient norm and generalisation gap per epoch" in page
    )  # curves' manifest caption
    assert (
        "Loss increase under small weight perturbations" in page
    )  # the caption `sharpness` declares (Analysis.caption)
    assert "Figure plain.png of the demo analysis: A figure per epoch." in page
    # nothing is fetched from the network: no external URLs at all
    assert (
        "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    )
    # missing and failed, each with the command that produces it
    assert f"probe analyze {probe_run} --plugin never --epochs all" in page
    assert f"probe analyze {probe_run} --plugin boom --epochs 2" in page
    assert "ValueError: boom at the last epoch" in page
    # the failed epoch of `boom` is listed; its successful epochs are shown as results
    assert "also failed for epoch(s) 2" in page
    assert not [p.name for p in (probe_run / REPORT_DIR).iterdir() if p.name not in (INDEX, STAMP)]
    assert not [
        p.name for p in probe_run.iterdir() if p.name.startswith(".")
    ]  # no temporary leftovers


def test_second_report_is_up_to_date_until_an_input_changes(probe_run, registry):
    from probe.analysis.runner import run_analyses

    assert invoke(probe_run).exit_code == 0
    index = probe_run / REPORT_DIR / INDEX
    before = index.stat()
    r = invoke(probe_run)
    assert (
        r.exit_code == 0
        and r.output.startswith("up to date")
        and r.output.strip().endswith(str(index))
    )
    after = index.stat()
    assert (after.st_ino, after.st_mtime_ns) == (
        before.st_ino,
        before.st_mtime_ns,
    )  # nothing rewritten

    run_analyses(probe_run, ["sharpness"], None, registry=registry)
    r = invoke(probe_run)
    assert r.output.startswith("wrote") and "sharpness" in index.read_text()
    assert invoke(probe_run).output.startswith("up to date")
    assert invoke(probe_run, "--force").output.startswith("wrote")
    # a new epoch of metrics is a new input too
    metrics = probe_run / "metrics.jsonl"
    metrics.write_text(
        metrics.read_text() + json.dumps({"epoch": 3, "val_acc": 0.5, "val_loss": 1.0}) + "\n"
    )
    assert invoke(probe_run).output.startswith("wrote")


def test_run_without_analyses_still_gets_a_useful_page(probe_run, fresh_registry):
    plugins.reset_registry(plugins.Registry())  # nothing installed either
    r = invoke(probe_run)
    assert r.exit_code == 0, r.output
    page = (probe_run / REPORT_DIR / INDEX).read_text()
    assert "<h2>Config</h2>" in page and page.count('<svg class="chart"') >= 4
    assert "No analysis results yet" in page and "<img" not in page


def test_missing_analyses_are_listed_for_a_run_without_results(probe_run, registry):
    page_text = (invoke(probe_run), (probe_run / REPORT_DIR / INDEX).read_text())[1]
    for name, epochs in (
        ("curves", "all"),
        ("demo", "all"),
        ("sharpness", "all"),
        ("never", "all"),
    ):
        assert f"probe analyze {probe_run} --plugin {name} --epochs {epochs}" in page_text


@pytest.mark.parametrize("make", ["empty", "file", "absent"])
def test_not_a_run_nor_a_sweep_is_a_one_line_error(tmp_path, make):
    target = tmp_path / "x"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("hello")
    r = invoke(target)
    assert r.exit_code == 1
    assert r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
    assert not (target / REPORT_DIR).exists()


def test_commands_quote_paths_and_name_non_default_params():
    cmd = analyze_command(
        "runs/my run",
        "projection",
        "all",
        {"layer": "x", "seed": 0, "same_scale": True},
        {"layer": "penultimate", "seed": 0, "same_scale": False},
    )
    assert cmd == (
        "probe analyze 'runs/my run' --plugin projection --epochs all --param layer=x "
        "--param same_scale=true"
    )


def test_import_is_light():
    code = (
        "import sys, probe.report.command, probe.report.pages, probe.studies.compare; "
        "print(sorted({'torch', 'matplotlib', 'numpy', 'jinja2'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_svg_chart_survives_nan_inf_and_picks_log_scale():
    s = ChartSeries("loss", [(0, 2.3), (1, math.nan), (2, 0.01), (3, math.inf), (4, 0.005)], "#000")
    svg = svg_chart("loss", [s])
    assert (
        svg.startswith("<svg")
        and "log y" in svg
        and svg.count("<path d=") == 1
        and "nan" not in svg.lower()
    )
    assert "no finite values" in svg_chart("empty", [ChartSeries("x", [(0, math.nan)], "#000")])
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 3, 6, integer=True) == [0, 1, 2, 3]


# --- the sweep page -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_template(tmp_path_factory) -> Path:
    """Two tiny trained runs (lr 0.01 and 0.2) and the sweep.json `probe sweep` writes for them."""
    from probe.studies.sweep import FORMAT, SWEEP_FILE, point_name
    from probe.testing import make_tiny_run

    root = tmp_path_factory.mktemp("sweep") / "sw"
    root.mkdir()
    points = []
    for lr in (0.01, 0.2):
        name = point_name({"lr": lr})
        make_tiny_run(root / name, lr=lr, epochs=1)
        points.append({"name": name, "values": {"lr": lr}})
    points.append({"name": point_name({"lr": 0.5}), "values": {"lr": 0.5}})  # not started
    (root / SWEEP_FILE).write_text(
        json.dumps(
            {
                "format": FORMAT,
                "name": "tiny-lr",
                "description": "two learning rates",
                "base": {"epochs": 1},
                "grid": {"lr": [0.01, 0.2, 0.5]},
                "analyze": {"plugins": [], "epochs": "last", "params": {}},
                "points": points,
            }
        )
    )
    return root


@pytest.fixture
def sweep(sweep_template, tmp_path) -> Path:
    dst = tmp_path / "sw"
    shutil.copytree(sweep_template, dst)
    return dst


def test_sweep_page_has_table_curves_and_run_pages(sweep, registry):
    r = invoke(sweep)
    assert r.exit_code == 0, r.output
    assert "2 run pages: 2 written, 0 up to date" in r.output
    index = sweep / REPORT_DIR / INDEX
    assert r.output.strip().endswith(f"wrote {index}")
    page = index.read_text()
    assert (
        'class="data sortable"' in page and '<th title="click to sort">final_val_acc</th>' in page
    )
    assert page.count('data-run="lr=0.01"') >= 3  # table row, curve lines, legend
    for name in ("lr=0.01", "lr=0.2"):
        assert (sweep / name / REPORT_DIR / INDEX).is_file()
        assert f'href="../{name.replace("=", "%3D")}/report/index.html"' in page
    assert (
        "not started" in page and "analysis_batch_size" not in page
    )  # the unstarted point adds no columns

    again = invoke(sweep)
    assert "0 written, 2 up to date" in again.output and again.output.strip().startswith(
        "2 run pages"
    )
    assert "up to date" in again.output.splitlines()[-1]

    from probe.analysis.runner import run_analyses

    run_analyses(sweep / "lr=0.2", ["sharpness"], None, registry=registry)
    third = invoke(sweep)
    assert "1 written, 1 up to date" in third.output and third.output.splitlines()[-1].startswith(
        "wrote"
    )


# --- in a real browser ----------------------------------------------------------------------------


def _browser_or_skip():
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    missing += [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        msg = (
            f"headless browser not available ({', '.join(missing)}); install it with "
            ".ci/install-browser.sh"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def browser():
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="probe-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--no-sandbox",
        "--headless",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1300,1000",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(driver, page: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(page.resolve().as_uri())
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && "
            "Array.from(document.images).every(i => i.complete)"
        )
    )


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    """Full-page screenshot in the test's tmp dir, copied to $PROBE_REPORT_SCREENSHOTS when set."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1300, min(max(height, 800), 12000))
    out = tmp_path / name
    assert driver.save_screenshot(str(out)) and out.stat().st_size > 10_000
    if os.environ.get("PROBE_REPORT_SCREENSHOTS"):
        dest = Path(os.environ["PROBE_REPORT_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, dest / name)
    driver.set_window_size(1300, 1000)
    return out


def _errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_run_page_in_a_browser_loads_figures_and_browses_epochs(
    browser, probe_run, registry, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    analysed(probe_run, registry)
    assert invoke(probe_run).exit_code == 0
    _open(browser, probe_run / REPORT_DIR / INDEX)
    widths = browser.execute_script(
        "return Array.from(document.images).filter(i => !i.hidden).map(i => i.naturalWidth)"
    )
    assert len(widths) >= 4 and all(w > 0 for w in widths), widths
    urls = browser.execute_script(
        "return Array.from(document.querySelectorAll('[src],[href]')).map(e => e.src || e.href)"
    )
    assert urls and all(u.startswith("file:") for u in urls), urls  # nothing from a network

    box = browser.find_element(By.ID, "a-demo-default-browser")
    img = box.find_element(By.CSS_SELECTOR, 'figure[data-fig="panel.png"] img')
    label = box.find_element(By.CLASS_NAME, "epoch-label")

    def shown():
        WebDriverWait(browser, 20).until(
            lambda d: d.execute_script("return arguments[0].complete", img)
        )
        return img.get_attribute("src"), browser.execute_script(
            "return arguments[0].naturalWidth", img
        )

    src2, width2 = shown()
    assert "epoch_0002/panel.png" in src2 and label.text == "epoch 2 (3 of 3)"
    box.find_element(By.CLASS_NAME, "prev").click()
    src1, width1 = shown()
    assert "epoch_0001/panel.png" in src1 and width1 > 0 and width1 != width2
    assert label.text == "epoch 1 (2 of 3)"
    assert (
        "Demo panel of epoch 1."
        in box.find_element(By.CSS_SELECTOR, 'figure[data-fig="panel.png"] figcaption').text
    )
    box.find_element(By.CLASS_NAME, "epoch-slider").send_keys(
        Keys.HOME
    )  # the slider itself, by keyboard
    src0, width0 = shown()
    assert "epoch_0000/panel.png" in src0 and width0 > 0 and width0 < width1
    assert box.find_element(By.CSS_SELECTOR, "tr.current").get_attribute("data-epoch") == "0"
    box.find_element(By.CLASS_NAME, "next").click()
    assert "epoch_0001/panel.png" in shown()[0]
    assert not _errors(browser)
    _screenshot(browser, tmp_path, "run-report.png")


def test_sweep_page_in_a_browser_sorts_and_links(browser, sweep, registry, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    assert invoke(sweep).exit_code == 0
    _open(browser, sweep / REPORT_DIR / INDEX)

    def order():
        return [
            r.get_attribute("data-run")
            for r in browser.find_elements(By.CSS_SELECTOR, "table.sortable tbody tr")
        ]

    assert order() == ["lr=0.01", "lr=0.2", "lr=0.5"]
    header = next(
        th for th in browser.find_elements(By.CSS_SELECTOR, "table.sortable th") if th.text == "lr"
    )
    header.click()
    header.click()  # descending
    assert order() == ["lr=0.5", "lr=0.2", "lr=0.01"]
    header = next(
        th
        for th in browser.find_elements(By.CSS_SELECTOR, "table.sortable th")
        if th.text.startswith("final_val_acc")
    )
    header.click()
    assert order()[-1] == "lr=0.5"  # a run without a value sorts last
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart .series")) >= 4
    assert not _errors(browser)
    _screenshot(browser, tmp_path, "sweep-report.png")
    browser.find_element(By.LINK_TEXT, "lr=0.2").click()
    WebDriverWait(browser, 20).until(lambda d: d.title == "probe report: lr=0.2")
    assert not _errors(browser)


# --- versions (#12, item 3) -----------------------------------------------------------------------


def _demo_registry(version: str):
    """Only `demo`, at the given version, as after upgrading the plugin that provides it."""

    @probe.hookimpl
    def register(register) -> None:
        register(
            probe.Analysis(
                name="demo",
                run=_demo,
                scope="epoch",
                needs={"checkpoint"},
                summary="A figure per epoch.",
                version=version,
            )
        )

    reg = plugins.Registry()
    reg.register(
        SimpleNamespace(register_analyses=register),
        plugins.PluginInfo("test", "tests", "tests", "0"),
    )
    plugins.reset_registry(reg)
    return reg


def test_report_shows_the_current_version_and_the_command_for_older_results(
    probe_run, fresh_registry
):
    import html
    import re
    import shlex

    from probe.analysis.runner import run_analyses

    def page() -> str:
        assert invoke(probe_run).exit_code == 0
        return html.unescape((probe_run / REPORT_DIR / INDEX).read_text())

    run_analyses(probe_run, ["demo"], "all", registry=_demo_registry("1"))
    reg = _demo_registry("2")  # the plugin was upgraded: every result is of an older version now
    text = page()
    assert (
        "Older versions only" in text
        and 'id="a-demo-default"' not in text
        and "epoch_0000/panel.png" not in text
    )
    row = re.search(
        r"<tr><td>demo</td><td>(\d+)</td><td>([^<]*)</td><td>([^<]*)</td><td><code "
        r"class=\"cmd\">([^<]*)</code>",
        text,
    )
    assert row and row.groups() == (
        "3",
        "1",
        "2",
        f"probe analyze {probe_run} --plugin demo --epochs 0,1,2",
    )

    run_analyses(probe_run, ["demo"], "last", registry=reg)  # only the last epoch recomputed
    text = page()
    assert 'id="a-demo-default"' in text and "Older versions only" not in text
    assert (
        "epoch_0002/panel.png" in text and "epoch_0001/panel.png" not in text
    )  # never mixed with version 1
    older = re.search(
        r"(\d+) result\(s\) of older version\(s\) (\S+) not shown; recompute them with "
        r"<code class=\"cmd\">([^<]*)</code>",
        text,
    )
    assert older and older.groups()[:2] == ("2", "1")
    cmd = shlex.split(older.group(3))  # the command it gives does recompute them
    assert cmd[:5] == ["probe", "analyze", str(probe_run), "--plugin", "demo"] and cmd[5:] == [
        "--epochs",
        "0,1",
    ]
    run_analyses(probe_run, ["demo"], cmd[6], registry=reg)
    text = page()
    assert "older version" not in text and all(f"epoch_000{e}/panel.png" in text for e in (0, 1, 2))
