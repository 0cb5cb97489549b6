"""Issue 11 (data loss, confinement): hostile run, sweep and analysis folders, table-driven.

Each row of CASES builds one hostile state (a folder that is not a run given to
`--force`, a user's file beside a run, a symbolic link where probe expects a
folder, a sweep file naming a point outside its folder, ...), runs one real `probe`
command on it, and asserts:

- the exit code and the exact one line it printed (never a traceback);
- a sentinel tree OUTSIDE the run (where the links point) is byte-identical afterwards;
- no user file was removed or changed, and (for every refusal) the run itself is unchanged.

`len(CASES)` is this file's count of hostile inputs (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from reliability_helpers import (
    copy_of,
    install_test_plugins,
    make_png_folder,
    one_torch_thread,  # noqa: F401 (an autouse fixture)
    probe_cli,
    train_small,
)

from probe import Analysis
from probe.contract.registry import reset_registry
from probe.io import atomic
from probe.rundir import lock

# --- the world each case starts from --------------------------------------------------------------

RECORDED = (
    "features.2, features.6, features.9, features.13, classifier.3"  # depth 4: a block ends at each
)


@dataclass
class World:
    run: Path  # a copy of a real 2-epoch run (optimizer SGD_mom, lr 0.05)
    out: Path  # the sentinel tree outside the run, where hostile links point
    sweep: Path  # an empty folder for hostile sweep files
    data: Path  # a tiny image folder

    def fmt(self, text: str) -> str:
        return text.format(
            run=self.run, out=self.out, sweep=self.sweep, data=self.data, host=socket.gethostname()
        )


def _scribe(ctx) -> None:
    """Stands in for the user writing notes into the run while a job runs: probe
    cannot tell the two apart."""
    (ctx.run.path / "NOTES.md").write_text("my notes")
    (ctx.run.path / "mine").mkdir(exist_ok=True)
    (ctx.run.path / "mine" / "plot.py").write_text("print('mine')")
    ctx.out.scalar("done", 1)


def _editor(ctx) -> None:
    """Edits a file of the user's that was in the run before the job (not a run
    file: theirs to change)."""
    notes = ctx.run.path / "NOTES.md"
    notes.write_text(notes.read_text() + " (edited)")
    ctx.out.scalar("done", 1)


EXTRA = [
    Analysis(
        name="scribe",
        run=_scribe,
        scope="run",
        needs={"metrics"},
        summary="Writes notes into the run.",
    ),
    Analysis(
        name="editor",
        run=_editor,
        scope="run",
        needs={"metrics"},
        summary="Edits the user's notes.",
    ),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small(tmp_path_factory.mktemp("hostile") / "run")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_png_folder(tmp_path_factory.mktemp("hostile-data") / "data", n_train=1, n_test=1)


@pytest.fixture(autouse=True)
def plugins():
    yield install_test_plugins(*EXTRA)
    reset_registry(None)


@pytest.fixture
def world(template: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.delenv("PROBE_DATA", raising=False)
    out = tmp_path / "outside"
    (out / "victim" / "default" / "run").mkdir(parents=True)
    (out / "victim" / "default" / "run" / "manifest.json").write_text('{"someone": "else"}')
    (out / "victim" / "keep.txt").write_text("not probe's")
    (out / "report").mkdir()
    (out / "report" / "index.html").write_text("<p>someone else's page</p>")
    (out / "thesis.tex").write_text("years of work")
    (out / "config.json").write_text(json.dumps({"format": "probe-run/1", "train": {}}))
    (out / "ckpts").mkdir()
    (out / "ckpts" / "epoch_0000.safetensors").write_bytes(b"\0" * 64)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    return World(copy_of(template, tmp_path), out, sweep, data)


def tree(root: Path) -> dict[str, object]:
    """Every entry under `root` (links as their target text, never followed) with its bytes."""
    out: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            rel = p.relative_to(root).as_posix()
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif not stat.S_ISREG(st.st_mode):
                out[rel] = (
                    "special",
                    stat.S_IFMT(st.st_mode),
                )  # a FIFO: opening it to read would block
            else:
                out[rel] = p.read_bytes()
    return out


# --- the hostile states ---------------------------------------------------------------------------


def link(at: Path, to: Path) -> None:
    if at.exists() and not at.is_symlink():
        import shutil

        shutil.rmtree(at) if at.is_dir() else at.unlink()
    at.parent.mkdir(parents=True, exist_ok=True)
    at.symlink_to(to)


def user_project(w: World, config: str) -> None:
    """A user's folder (not a run) with a config.json of their own."""
    import shutil

    shutil.rmtree(w.run)
    (w.run / "src").mkdir(parents=True)
    (w.run / "src" / "main.py").write_text("print('hi')")
    (w.run / "thesis.tex").write_text("chapter 1")
    (w.run / "config.json").write_text(config)


def empty_run_dir(w: World) -> None:
    import shutil

    shutil.rmtree(w.run)
    w.run.mkdir()


def train(w: World, *extra: str) -> list[str]:
    return [
        "train",
        "--run-dir",
        str(w.run),
        "--data",
        str(w.data),
        "--quiet",
        "--epochs",
        "1",
        *extra,
    ]


def resume(w: World, *extra: str) -> list[str]:
    return ["train", "--run-dir", str(w.run), "--quiet", "--resume", *extra]


def dry_run(grid: str) -> Callable[[World], list[str]]:
    """`probe sweep --dry-run` of a spec with this [grid]: it must reject what training would."""

    def args(w: World) -> list[str]:
        (w.sweep / "spec.toml").write_text(f"[base]\nepochs = 1\n[grid]\n{grid}\n")
        return ["sweep", str(w.sweep / "spec.toml"), "--out", str(w.sweep / "out"), "--dry-run"]

    return args


FORCE_FOREIGN = (
    "error: --force: {run} holds files probe did not make ({names}); move them out "
    "or pick another --run-dir; nothing was deleted"
)
NOT_A_RUN = (
    "error: --force: {run} is not a probe run (its config.json is missing or does not say "
    "probe-run/...); refusing to delete anything in it"
)
LINK = (
    "error: {path}: is a symbolic link; probe never writes through a link out of {root} "
    "(replace it with a real folder or file)"
)


def _foreign(names: str) -> str:
    return FORCE_FOREIGN.replace("{names}", names)


@dataclass
class Case:
    id: str
    setup: Callable[[World], list[str]]  # makes the hostile state, returns the command line
    code: int
    line: str  # the exact line printed (stderr); "" for none
    user_files: tuple[str, ...] = ()  # run-relative files that must survive, unchanged
    run_unchanged: bool = True  # everything in the run is as it was (refusals change nothing)
    created: tuple[str, ...] = field(default=())  # run-relative files that must exist afterwards


def _setup(
    *steps: Callable[[World], object], args: Callable[[World], list[str]]
) -> Callable[[World], list[str]]:
    def run(w: World) -> list[str]:
        for step in steps:
            step(w)
        return args(w)

    return run


def write(rel: str, text: str = "mine") -> Callable[[World], None]:
    def step(w: World) -> None:
        p = w.run / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    return step


def to_out(rel: str, target: str) -> Callable[[World], None]:
    return lambda w: link(w.run / rel, w.out / target)


def analyze(*extra: str) -> Callable[[World], list[str]]:
    return lambda w: ["analyze", str(w.run), *extra]


CASES = [
    # probe train --force: only a probe run, only probe's own entries, every option checked first
    Case(
        "force-user-project-any-json",
        _setup(
            lambda w: user_project(w, '{"name": "my project"}'), args=lambda w: train(w, "--force")
        ),
        2,
        NOT_A_RUN,
        ("thesis.tex", "src/main.py", "config.json"),
    ),
    Case(
        "force-user-project-not-json",
        _setup(lambda w: user_project(w, "name = 'x'"), args=lambda w: train(w, "--force")),
        2,
        NOT_A_RUN,
        ("thesis.tex", "src/main.py"),
    ),
    Case(
        "force-user-project-format-not-string",
        _setup(
            lambda w: user_project(w, '{"format": ["probe-run/1"]}'),
            args=lambda w: train(w, "--force"),
        ),
        2,
        NOT_A_RUN,
        ("thesis.tex",),
    ),
    Case(
        "force-config-nested-deep",
        _setup(
            lambda w: user_project(w, "[" * 100_000 + "]" * 100_000),
            args=lambda w: train(w, "--force"),
        ),
        2,
        NOT_A_RUN,
        ("thesis.tex",),
    ),
    Case(
        "force-config-is-a-link",
        _setup(to_out("config.json", "config.json"), args=lambda w: train(w, "--force")),
        2,
        NOT_A_RUN,
    ),
    Case(
        "force-run-with-user-notes",
        _setup(write("NOTES.md"), args=lambda w: train(w, "--force")),
        2,
        _foreign("NOTES.md"),
        ("NOTES.md",),
    ),
    Case(
        "force-run-with-user-folder",
        _setup(write("mine/plot.py"), write("paper.tex"), args=lambda w: train(w, "--force")),
        2,
        _foreign("mine, paper.tex"),
        ("mine/plot.py", "paper.tex"),
    ),
    Case(
        "force-user-file-in-checkpoints",
        _setup(write("checkpoints/notes.txt"), args=lambda w: train(w, "--force")),
        2,
        _foreign("checkpoints/notes.txt"),
        ("checkpoints/notes.txt",),
    ),
    Case(
        "force-user-file-in-data",
        _setup(write("data/labels.csv"), args=lambda w: train(w, "--force")),
        2,
        _foreign("data/labels.csv"),
        ("data/labels.csv",),
    ),
    Case(
        "force-checkpoints-linked-out",
        _setup(to_out("checkpoints", "ckpts"), args=lambda w: train(w, "--force")),
        2,
        _foreign("checkpoints"),
    ),
    Case(
        "force-analyses-linked-out",
        _setup(to_out("analyses", "victim"), args=lambda w: train(w, "--force")),
        2,
        _foreign("analyses"),
    ),
    Case(
        "force-report-is-a-file",
        _setup(write("report", "a file"), args=lambda w: train(w, "--force")),
        2,
        _foreign("report"),
        ("report",),
    ),
    Case(
        "force-metrics-is-a-folder",
        _setup(
            lambda w: (w.run / "metrics.jsonl").unlink(),
            write("metrics.jsonl/x"),
            args=lambda w: train(w, "--force"),
        ),
        2,
        _foreign("metrics.jsonl"),
        ("metrics.jsonl/x",),
    ),
    Case(
        "force-activations-linked-out",
        _setup(to_out("activations", "ckpts"), args=lambda w: train(w, "--force")),
        2,
        _foreign("activations"),
    ),
    Case(
        "force-logs-linked-out",
        _setup(to_out("logs", "victim"), args=lambda w: train(w, "--force")),
        2,
        _foreign("logs"),
    ),
    Case(
        "force-temp-named-link",
        _setup(to_out(".x.123.abcdefgh.tmp", "victim"), args=lambda w: train(w, "--force")),
        2,
        _foreign(".x.123.abcdefgh.tmp"),
    ),
    Case(
        "force-lock-file-linked-out",
        _setup(to_out(".probe-train.lock", "thesis.tex"), args=lambda w: train(w, "--force")),
        2,
        _foreign(".probe-train.lock"),
    ),
    Case(
        "force-user-temp-named-file",
        _setup(
            write(".notes.tmp"), write("checkpoints/.draft.tmp"), args=lambda w: train(w, "--force")
        ),
        2,
        _foreign(".notes.tmp, checkpoints/.draft.tmp"),
        (".notes.tmp", "checkpoints/.draft.tmp"),
    ),
    Case(
        "force-lock-file-is-a-fifo",
        _setup(
            lambda w: os.mkfifo(w.run / ".probe-train.lock"), args=lambda w: train(w, "--force")
        ),
        2,
        _foreign(".probe-train.lock"),
    ),
    Case(
        "train-lock-file-is-a-fifo",
        _setup(
            empty_run_dir, lambda w: os.mkfifo(w.run / ".probe-train.lock"), args=lambda w: train(w)
        ),
        1,
        "error: {run}/.probe-train.lock: is not a regular file; remove it (probe keeps "
        "its lock file there)",
    ),
    Case(
        "force-user-folder-in-activations",
        _setup(write("activations/extra/a.npy"), args=lambda w: train(w, "--force")),
        2,
        _foreign("activations/extra"),
        ("activations/extra/a.npy",),
    ),
    Case(
        "train-into-user-project",
        _setup(lambda w: user_project(w, "{}"), args=lambda w: train(w)),
        2,
        "error: --run-dir: {run} already exists; use --resume to continue it or "
        "--force to replace it",
        ("thesis.tex", "src/main.py"),
    ),
    Case(
        "train-lock-file-linked-out",
        _setup(empty_run_dir, to_out(".probe-train.lock", "thesis.tex"), args=lambda w: train(w)),
        1,
        "error: {run}/.probe-train.lock: is a symbolic link; remove it (probe keeps its lock "
        "file inside the run)",
    ),
    Case(
        "force-bad-full-maps-deletes-nothing",
        lambda w: train(w, "--force", "--full-maps", "features.99"),
        2,
        f"error: --full-maps: unknown layer(s) features.99; recorded layers are {RECORDED}",
    ),
    Case(
        "force-bad-depth-deletes-nothing",
        lambda w: train(w, "--force", "--model-depth", "5"),
        2,
        "error: Invalid value for '--model-depth': '5' is not one of '2', '4', '8'. "
        "(see `cli train --help`)",
    ),  # CliRunner's program name
    Case(
        "train-run-dir-name-too-long",
        lambda w: ["train", "--run-dir", str(w.out / ("r" * 300)), "--data", str(w.data)],
        2,
        "error: --run-dir: the folder name "
        + "r" * 40
        + "... is 300 bytes; a file name may have at most 255",
    ),
    # --resume: the stored config; links in the training's folders are refused
    Case(
        "resume-real-change",
        lambda w: resume(w, "--optimizer", "Adam", "--lr", "0.1"),
        2,
        "error: --resume: continues the stored config of {run}/config.json; only --epochs "
        "and --device may change, but --optimizer (stored 'SGD_mom', given 'Adam'); --lr "
        "(stored 0.05, given 0.1)",
    ),
    Case(
        "resume-checkpoints-linked-out",
        _setup(to_out("checkpoints", "ckpts"), args=lambda w: resume(w)),
        1,
        LINK.replace("{path}", "{run}/checkpoints").replace("{root}", "{run}"),
    ),
    Case(
        "resume-metrics-linked-out",
        _setup(to_out("metrics.jsonl", "thesis.tex"), args=lambda w: resume(w)),
        1,
        LINK.replace("{path}", "{run}/metrics.jsonl").replace("{root}", "{run}"),
    ),
    Case(
        "resume-metrics-is-a-fifo",
        _setup(
            lambda w: (w.run / "metrics.jsonl").unlink(),
            lambda w: os.mkfifo(w.run / "metrics.jsonl"),
            args=lambda w: resume(w),
        ),
        1,
        "error: {run}/metrics.jsonl: expected a regular file, found something else (a FIFO, a "
        "device, a file...); move it away to resume",
    ),
    Case(
        "resume-data-is-a-file",
        _setup(
            lambda w: __import__("shutil").rmtree(w.run / "data"),
            write("data", "x"),
            args=lambda w: resume(w),
        ),
        1,
        "error: {run}/data: expected a folder, found something else (a FIFO, a device, a file...); "
        "move it away to resume",
    ),
    # probe analyze: no link on the way to a result, logs/ included
    Case(
        "analyze-analyses-linked-out",
        _setup(to_out("analyses", "victim"), args=analyze("-p", "curves")),
        1,
        LINK.replace("{path}", "{run}/analyses").replace("{root}", "{run}"),
    ),
    Case(
        "analyze-analysis-folder-linked-out",
        _setup(to_out("analyses/curves", "victim"), args=analyze("-p", "curves")),
        1,
        LINK.replace("{path}", "{run}/analyses/curves").replace("{root}", "{run}"),
    ),
    Case(
        "analyze-variant-folder-linked-out",
        _setup(to_out("analyses/curves/default", "victim/default"), args=analyze("-p", "curves")),
        1,
        LINK.replace("{path}", "{run}/analyses/curves/default").replace("{root}", "{run}"),
    ),
    Case(
        "analyze-result-folder-linked-out",
        _setup(
            to_out("analyses/curves/default/run", "victim/default/run"),
            args=analyze("-p", "curves"),
        ),
        1,
        LINK.replace("{path}", "{run}/analyses/curves/default/run").replace("{root}", "{run}"),
    ),
    Case(
        "analyze-link-inside-the-run",
        _setup(
            lambda w: link(w.run / "analyses", w.run / "checkpoints"), args=analyze("-p", "curves")
        ),
        1,
        LINK.replace("{path}", "{run}/analyses").replace("{root}", "{run}"),
    ),
    Case(
        "analyze-dangling-link",
        _setup(to_out("analyses", "not-there"), args=analyze("-p", "curves")),
        1,
        LINK.replace("{path}", "{run}/analyses").replace("{root}", "{run}"),
    ),
    Case(
        "analyze-logs-linked-out",
        _setup(to_out("logs", "victim"), args=analyze("-p", "curves")),
        1,
        LINK.replace("{path}", "{run}/logs").replace("{root}", "{run}"),
    ),
    Case(
        "analyze-analyses-is-a-file",
        _setup(write("analyses", "a file"), args=analyze("-p", "curves")),
        1,
        "error: {run}/analyses: expected a folder, found a file of another kind",
        ("analyses",),
    ),
    # probe analyze: files the user makes while a job runs are never removed, the result is kept
    Case(
        "analyze-user-writes-notes-meanwhile",
        analyze("-p", "scribe", "-q"),
        0,
        "warning: scribe (run): new files outside its result folder while it ran (left in place): "
        "NOTES.md, mine/plot.py",
        run_unchanged=False,
        created=("NOTES.md", "mine/plot.py", "analyses/scribe/default/run/manifest.json"),
    ),
    Case(
        "analyze-beside-a-fifo",
        _setup(
            lambda w: (w.run / "metrics.jsonl").unlink(),
            lambda w: os.mkfifo(w.run / "metrics.jsonl"),
            args=analyze("-p", "peek", "-q"),
        ),
        0,
        "",
        run_unchanged=False,
        created=("analyses/peek/default/epoch_0002/manifest.json",),
    ),
    Case(
        "analyze-user-edits-notes-meanwhile",
        _setup(write("NOTES.md", "draft"), args=analyze("-p", "editor", "-q")),
        0,
        "",
        run_unchanged=False,
        created=("analyses/editor/default/run/manifest.json",),
    ),
    # probe report: a linked report/ is not replaced
    Case(
        "report-folder-linked-out",
        _setup(to_out("report", "report"), args=lambda w: ["report", str(w.run)]),
        1,
        "error: {run}/report: is a symlink; probe writes no report through a link (remove it)",
    ),
    # sweep points read from sweep.json: see the sweep table of tests/test_report_hostile.py
    # probe sweep --dry-run: what training would reject, for every point
    Case(
        "sweep-dry-run-unknown-layer",
        dry_run('full_maps = [["features.2"], ["features.99"]]'),
        2,
        "error: {sweep}/spec.toml: point full_maps=features.99: --full-maps: unknown layer(s) "
        f"features.99; recorded layers are {RECORDED}",
    ),
    Case(
        "sweep-dry-run-point-name-too-long",
        dry_run(f'data = ["{"d" * 300}"]'),
        2,
        "error: {sweep}/spec.toml: point data="
        + "d" * 55
        + "...: the folder name data="
        + "d" * 35
        + "... is 305 bytes; a file name may have at most 255",
    ),
]


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(world: World, case: Case) -> None:
    args = case.setup(world)
    outside, run_before = tree(world.out), tree(world.run)
    user = {rel: (world.run / rel).read_bytes() for rel in case.user_files}
    result = probe_cli(*args)
    assert "Traceback" not in result.output
    assert result.exit_code == case.code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ([world.fmt(case.line)] if case.line else []), result.stderr
    assert tree(world.out) == outside  # nothing outside the run was written, replaced or deleted
    for rel, content in user.items():
        assert (world.run / rel).read_bytes() == content, rel
    if case.run_unchanged:
        assert tree(world.run) == run_before
    else:  # nothing the run held before is gone
        after = tree(world.run)
        assert set(run_before) <= set(after), set(run_before) - set(after)
    for rel in case.created:
        assert (world.run / rel).is_file(), rel


# --- what is allowed still works ------------------------------------------------------------------


def test_force_replaces_a_probe_run_and_keeps_nothing_of_it(world: World) -> None:
    """Only probe's entries (and its temporaries) are there: --force replaces the run,
    nothing else is touched."""
    (world.run / "analyses" / "x").mkdir(parents=True)
    (world.run / ".metrics.jsonl.123.abcdefgh.tmp").write_text("killed writer")
    outside = tree(world.out)
    result = probe_cli(*train(world, "--force", "--optimizer", "Adam", "--base-width", "2"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in world.run.iterdir()) == [
        "activations",
        "checkpoints",
        "config.json",
        "data",
        "metrics.jsonl",
        "predictions",
    ]
    config = json.loads((world.run / "config.json").read_text())
    assert config["train"]["optimizer"] == "Adam" and config["train"]["epochs"] == 1
    assert tree(world.out) == outside


def test_analyze_removes_stale_temporaries_and_nothing_else(world: World) -> None:
    """A job killed mid-write leaves `.x.<pid>.<random>.tmp`; the next analyze removes those of
    dead processes only."""
    variant = world.run / "analyses" / "curves" / "default"
    variant.mkdir(parents=True)
    dead = _dead_pid()
    stale_dir = variant / f".run.{dead}.abcd1234.tmp"
    (stale_dir / "half").mkdir(parents=True)
    stale_old = variant / f".run.{dead}.q1w2e3r4.old"
    stale_old.mkdir()
    stale_file = variant / f".run.failed.json.{dead}.zzzz9999.tmp"
    stale_file.write_text("{")
    stale_log = world.run / "logs" / f".analyze-1.log.{dead}.aaaa1111.tmp"
    stale_log.parent.mkdir()
    stale_log.write_text("x")
    live = variant / ".run.1.abcd1234.tmp"  # pid 1 is alive: another process's work in progress
    live.mkdir()
    users = [
        variant / ".notes.tmp",
        variant / f".x.{dead}.tmp",
        world.run / "analyses" / "mine.txt",
    ]
    for p in users:
        p.write_text("mine")
    linked = (
        variant / f".run.{dead}.link1234.tmp"
    )  # probe-named but a link: never followed nor removed
    linked.symlink_to(world.out / "victim")
    outside = tree(world.out)
    result = probe_cli("analyze", world.run, "-p", "curves", "-q")
    assert result.exit_code == 0, result.output
    assert (
        not stale_dir.exists()
        and not stale_old.exists()
        and not stale_file.exists()
        and not stale_log.exists()
    )
    assert live.is_dir() and linked.is_symlink() and all(p.read_text() == "mine" for p in users)
    assert tree(world.out) == outside


def test_atomic_dir_refuses_a_link_as_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    (tmp_path / "result").symlink_to(victim)
    with (
        pytest.raises(Exception, match="is a symbolic link") as info,
        atomic.atomic_dir(tmp_path / "result") as tmp,
    ):
        (tmp / "a.txt").write_text("new")
    assert "result" in str(info.value)
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result", "victim"]  # no temporary left


def test_a_training_lock_held_elsewhere_refuses_a_second_writer(world: World) -> None:
    before = tree(world.run)
    with lock.hold(world.run):
        record = json.loads((world.run / lock.LOCK_FILE).read_text())
        result = probe_cli(*resume(world))
        forced = probe_cli(*train(world, "--force"))
    expected = (
        f"error: --run-dir: {world.run} is being trained by pid {os.getpid()} on "
        f"{socket.gethostname()} since {record['started']}; wait for it to finish or stop it (one "
        "training writes a run at a time)"
    )
    for r in (result, forced):
        assert r.exit_code == 2 and r.stderr.strip() == expected, r.output
    assert tree(world.run) == before  # the lock file is gone with its holder, nothing else changed


def test_a_stale_lock_file_is_taken_over(world: World) -> None:
    (world.run / lock.LOCK_FILE).write_text(
        json.dumps(
            {
                "pid": _dead_pid(),
                "host": socket.gethostname(),
                "started": "2020-01-01T00:00:00+00:00",
            }
        )
    )
    result = probe_cli(*train(world, "--force", "--base-width", "2"))
    assert result.exit_code == 0, result.output
    assert not (world.run / lock.LOCK_FILE).exists()


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_clear_run_leaves_what_appeared_after_the_check(world: World) -> None:
    """The user drops a file in after `check_run_dir` passed and before `--force` clears: it is not
    probe's, so it stays."""
    from probe.rundir.prepare import check_run_dir, clear_run

    check_run_dir(world.run, resume=False, force=True)  # nothing foreign yet
    (world.run / "NOTES.md").write_text("just now")
    (world.run / "checkpoints" / "mine.txt").write_text("just now")
    (world.run / ".metrics.jsonl.77.abcdefgh.tmp").write_text("a killed writer's")
    clear_run(world.run)
    assert sorted(p.relative_to(world.run).as_posix() for p in world.run.rglob("*")) == [
        "NOTES.md",
        "checkpoints",
        "checkpoints/mine.txt",
    ]


def test_training_removes_only_its_own_temporaries(world: World) -> None:
    from probe.rundir.prepare import remove_training_temps

    ours = [
        ".config.json.abc123.tmp",
        ".metrics.jsonl.9.zzzzzzzz.tmp",
        "checkpoints/.epoch_0003.safetensors.5.abcdefgh.tmp",
        "activations/.epoch_0003.h5.5.abcdefgh.h5.tmp",
        "data/.probe_set.safetensors.x.tmp",
    ]
    theirs = [
        ".notes.tmp",
        "checkpoints/.draft.tmp",
        "activations/.epoch_0003.npy.tmp",
        "data/.labels.csv.1.tmp",
    ]
    for rel in ours + theirs:
        (world.run / rel).write_text("x")
    removed = remove_training_temps(world.run)
    assert sorted(p.relative_to(world.run).as_posix() for p in removed) == sorted(ours)
    assert all((world.run / rel).read_text() == "x" for rel in theirs)
