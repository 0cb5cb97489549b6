"""`probe report` and `probe compare` against hostile files (issue #11, items 2, 5 and 6).

Every file of a run or sweep is untrusted. The runs here are written by hand (no
training): config.json, metrics.jsonl, result manifests, failure records, a sweep's
sweep.json and status.json, each filled with strings built to break out of the
context they land in. Three kinds of tests:

* table-driven escaping (contexts x hostile strings): the rendered page parses to the
  same set of element and attribute names as a clean page built the same way, the
  hostile string comes back verbatim as text, and inline JSON holds no `<`;
* the same pages in headless Chromium (the pattern of tests/test_report.py: skipped
  without a browser, failing in CI): no script ran (`window.__pwned`), the DOM gains
  no element or attribute, every section renders (a `<!--` swallows nothing);
* crafted files: each is skipped with exactly one `warning:` line, or refused with
  exactly one `error:` line, never a traceback, and nothing outside is read or written.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest
import test_report
from click.testing import CliRunner

from probe.cli import ProbeGroup
from probe.contract import registry as plugins
from probe.errors import ProbeError
from probe.io import atomic, safeio
from probe.report.command import report_command
from probe.report.digest import INDEX, REPORT_DIR
from probe.report.model import Installed
from probe.report.pages import report_run, report_sweep
from probe.rundir.readers import FAILURE_FIELDS, MANIFEST_FIELDS
from probe.studies import compare, rows, table

browser = test_report.browser  # the module-scoped headless Chromium of the run-page tests, shared

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)

# Each breaks out of one context if written unescaped: text, a quoted attribute (either
# quote), the inline JSON script (`</script>`, and `<!--<script>`, the double-escaped
# state that makes the next `</script>` not end it), a comment, a URL, a template engine.
HOSTILE = {
    "script": "<script>window.__pwned=1</script>",
    "dq-attr": '"><img src=x onerror=window.__pwned=1>',
    "sq-attr": "'><svg onload=window.__pwned=1>",
    "end-script": "</script><script>window.__pwned=1</script>",
    "comment": "<!--",
    "comment-script": "<!--<script>",
    "end-comment": "--><script>window.__pwned=1</script><!--",
    "js-url": "javascript:window.__pwned=1",
    # evaluates to 100001: not a clock or path digit run
    "template": "{{9091*11}}{% if 1 %}x{% endif %}${9091*11}",
    "rlo": "\u202egnp.exe\u202c",
    "entities": "&lt;script&gt;&amp;&#x3c;",
    "style": "</style><style>*{display:none}</style>",
    "rawtext": "</textarea></title></pre><iframe srcdoc='<script>parent.__pwned=1</script>'>",
}
CLEAN = "plain"
CONTEXTS = ("config", "metrics", "manifest", "failure", "names", "installed", "sweep")


def fname(s: str) -> str:
    """A file or folder name carrying `s` (only `/` cannot be in one)."""
    return s.replace("/", "_")[:120] or "_"


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def manifest(
    analysis: str, variant: str, epoch: int | None, files: list[str], s: str, version: str = "1"
) -> dict:
    return {
        "format": "probe-result/1",
        "analysis": analysis,
        "variant": variant,
        "version": version,
        "provider": s,
        "provider_version": s,
        "params": {s: s, "n": 1},
        "scope": "run" if epoch is None else "epoch",
        "epoch": epoch,
        "epochs": [0, 1] if epoch is None else [epoch],
        "files": files,
        "scalars": {s: s, "value": 1.5},
        "captions": {files[0]: s} if files else {},
        "created": s,
        "seconds": 0.5,
        "key": s,
        "inputs": {s: s},
    }


def make_run(root: Path, h: dict[str, str]) -> Path:
    """A two-epoch run by hand: h[context] is the string written into every string
    field of that context."""
    c, mt, mf, fl, nm = h["config"], h["metrics"], h["manifest"], h["failure"], h["names"]
    (root / "checkpoints").mkdir(parents=True)
    for e in (0, 1):
        (root / f"checkpoints/epoch_{e:04d}.safetensors").write_bytes(b"")
    write_json(
        root / "config.json",
        {
            "format": "probe-run/1",
            "train": {"epochs": 1, "optimizer": c, "lr": 0.1, c: c, "augment": [c, 1]},
            "model_spec": {"arch": c, c: [c, {c: c}]},
            "versions": {"torch": c, c: c},
            "data_source": c,
            "classes": [c, c],
            "num_params": 1234,
            c: {c: c},
            "device": c,
        },
    )
    rows = [
        {"epoch": 0, "val_loss": 2.3, "val_acc": 0.1, mt: 0.5, "note": mt},
        {
            "epoch": 1,
            "train_loss": 1.9,
            "train_acc": 0.3,
            "val_loss": 2.0,
            "val_acc": 0.25,
            mt: 0.7,
            "note": mt,
        },
    ]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = root / "analyses"
    fig, data = fname(mf) + ".png", fname(mf) + ".json"
    for e in (0, 1):  # a per-epoch analysis: the epoch browser, its inline JSON, the scalar table
        d = a / f"demo/default/epoch_{e:04d}"
        write_json(d / "manifest.json", manifest("demo", "default", e, [fig, data], mf))
        (d / fig).write_bytes(PNG)
        (d / data).write_text("{}")
    # a run-wide analysis and variant named by the string, with one figure per epoch (a browser too)
    name = fname(nm)
    d = a / name / name / "run"
    figs = [f"{name}_epoch_0000.png", f"{name}_epoch_0001.png", f"{name}.png"]
    write_json(d / "manifest.json", manifest(name, name, None, figs, nm))
    for f in figs:
        (d / f).write_bytes(PNG)
    # results of an older version of an installed analysis: hidden, with the command
    # that recomputes them
    d = a / "sharp/default/run"
    write_json(d / "manifest.json", manifest("sharp", "default", None, [], mf, version=mf))
    write_json(
        a / "boom/default/epoch_0001.failed.json",
        {
            "analysis": "boom",
            "variant": "default",
            "epoch": 1,
            "params": {fl: fl, "eps": 0.5},
            "status": fl,
            "error": fl,
            "traceback": f"Traceback:\n  {fl}\n{fl}",
            "created": fl,
        },
    )
    return root


def installed(s: str) -> tuple[dict[str, Installed], str]:
    """Installed analyses whose summaries and captions carry `s`; a plugin-load note too."""

    def one(name: str, scope: str, version: str = "1") -> Installed:
        return Installed(
            name, scope, s, {"eps": 0.1}, {"x.png": s}, {"name": name, "summary": s}, version
        )

    inst = {
        "demo": one("demo", "epoch"),
        "sharp": one("sharp", "run", "2"),
        "boom": one("boom", "epoch"),
        "never": one("never", "epoch"),
    }
    return inst, f"plugin broken did not load: {s}"


def make_sweep(root: Path, s: str) -> Path:
    """A sweep of two hand-made runs, one named by `s`, with `s` in every string of
    sweep.json and status.json."""
    names = [fname(s), "lr=0.1"]
    points = [{"name": n, "values": {"lr": v}} for n, v in zip(names, [s, 0.1], strict=True)]
    points.append({"name": fname(s + "-unstarted"), "values": {"lr": s}})
    write_json(
        root / "sweep.json",
        {
            "format": "probe-sweep/1",
            "name": s,
            "description": s,
            "grid": {"lr": [s, 0.1]},
            "swept": ["lr"],
            "points": points,
            "analyze": {"plugins": [s], "epochs": s, "params": {}},
        },
    )
    write_json(
        root / "status.json",
        {
            "format": "probe-sweep/1",
            "runs": {names[0]: {"state": "failed", "error": s}, names[1]: {"state": "done"}},
        },
    )
    for n, lr in zip(names, [s, 0.1], strict=True):
        make_run(root / n, {**{k: CLEAN for k in CONTEXTS}, "config": s})
        cfg = json.loads((root / n / "config.json").read_text())
        cfg["train"]["lr"] = lr
        write_json(root / n / "config.json", cfg)
    return root


def build(tmp: Path, h: dict[str, str], sweep: bool = True) -> tuple[Path, Path | None]:
    """(run page, sweep page or None) with h[context] in every field of each context."""
    run = make_run(tmp / "run", h)
    warnings: list[str] = []
    run_page = report_run(run, installed=installed(h["installed"]), warn=warnings.append).path
    assert not warnings, warnings  # every hostile string is a legal value: nothing is skipped
    if not sweep:
        return run_page, None
    sweep_page = report_sweep(
        make_sweep(tmp / "sweep", h["sweep"]), echo=lambda _: None, warn=warnings.append
    ).path
    assert not warnings, warnings
    return run_page, sweep_page


class Parsed(HTMLParser):
    """Element names, attribute names, text and inline JSON of a page, as an
    HTML parser sees them."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.text: list[str] = []
        self.scripts: list[tuple[dict, str]] = []
        self.ids: set[str] = set()
        self._script: dict | None = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs.update(k for k, _ in attrs)
        self.ids.update(v for k, v in attrs if k == "id")
        self.text.extend(
            v for k, v in attrs if v and k in ("alt", "title", "data-run", "data-fig", "aria-label")
        )
        if tag == "script":
            self._script = dict(attrs)

    def handle_data(self, data):
        if self._script is not None:
            self.scripts.append((self._script, data))
        else:
            self.text.append(data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None


@pytest.fixture(scope="module")
def clean_pages(tmp_path_factory) -> tuple[Parsed, Parsed]:
    run_page, sweep_page = build(tmp_path_factory.mktemp("clean"), {k: CLEAN for k in CONTEXTS})
    return Parsed(run_page.read_text()), Parsed(sweep_page.read_text())


def _same_shape(page: Parsed, clean: Parsed) -> None:
    assert page.tags == clean.tags, page.tags ^ clean.tags
    assert page.attrs == clean.attrs, page.attrs ^ clean.attrs
    assert len(page.scripts) == len(clean.scripts)
    for attrs, body in page.scripts:
        if attrs.get("type") == "application/json":
            assert "<" not in body and ">" not in body and "&" not in body
            json.loads(body)
    assert page.ids >= {"config", "metrics", "missing"} or page.ids >= {"table", "curves", "runs"}


# --- escaping, table-driven -----------------------------------------------------------------------


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("key", list(HOSTILE))
def test_every_context_escapes_every_hostile_string(tmp_path, clean_pages, context, key):
    s = HOSTILE[key]
    # the sweep page shows the sweep's files and its runs' configs; the rest only reach the run page
    run_page, sweep_page = build(
        tmp_path, {**{k: CLEAN for k in CONTEXTS}, context: s}, context in ("sweep", "config")
    )
    run = Parsed(run_page.read_text())
    _same_shape(run, clean_pages[0])
    if sweep_page is not None:
        _same_shape(Parsed(sweep_page.read_text()), clean_pages[1])
    page = Parsed(sweep_page.read_text()) if context == "sweep" else run
    want = fname(s) if context == "names" else s
    text = "".join(page.text)
    inline = "".join(body for _, body in page.scripts)
    assert want in text or json.dumps(want)[1:-1].replace("<", "\\u003c") in inline, (
        f"{want!r} not shown as text"
    )
    assert "{{" not in s or "100001" not in text.replace(want, "")  # no template evaluated a value


def test_inline_json_escapes_what_ends_a_script():
    from probe.report.render import environment

    out = (
        environment()
        .from_string("<script>{{ v|tojson }}</script>")
        .render(v={"a": "</script><!--<script>", "b": "'&"})
    )
    assert out == (
        '<script>{"a": "\\u003c/script\\u003e\\u003c!--\\u003cscript\\u003e", '
        '"b": "\\u0027\\u0026"}</script>'
    )


@pytest.mark.parametrize("name", ["javascript:x", "a b?c#d", "%2e%2e", "<x>\"'"])
def test_links_are_relative_and_percent_encoded(tmp_path, name):
    from probe.report.views import _rel

    url = _rel(tmp_path / "report", tmp_path / "analyses" / name)
    assert (
        url.startswith("../analyses/") and url.count("/") == 2
    )  # one encoded part, never a path step of its own
    assert (
        not set(url[len("../analyses/") :]) & set(":?#<>\"' ") and "%" in url[len("../analyses/") :]
    )
    with pytest.raises(ValueError):
        _rel(tmp_path / "report", tmp_path / "analyses" / ".." / name)


# --- crafted files: one line each -----------------------------------------------------------------


def clean_run(root: Path) -> Path:
    return make_run(root, {k: CLEAN for k in CONTEXTS})


def invoke(command, *args):
    group = ProbeGroup()
    group.add_command(command)
    return CliRunner().invoke(group, [command.name, *map(str, args)])


@pytest.fixture
def empty_registry(fresh_registry):
    plugins.reset_registry(plugins.Registry())


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def sentinel(tmp_path) -> Path:
    """A tree outside the run that nothing may read through a link or write into."""
    s = tmp_path / "outside"
    (s / "sub").mkdir(parents=True)
    (s / "secret.txt").write_text("secret-canary")
    (s / "sub" / "manifest.json").write_text(
        json.dumps(manifest("demo", "default", 0, ["secret.txt"], "canary"))
    )
    return s


M0 = "analyses/demo/default/epoch_0000/manifest.json"


def _set(rel: str, **fields):
    def edit(run: Path, outside: Path) -> None:
        p = run / rel
        d = json.loads(p.read_text())
        d.update(fields)
        p.write_text(json.dumps(d))

    return edit


def _write(rel: str, text: str):
    def edit(run: Path, outside: Path) -> None:
        (run / rel).write_text(text)

    return edit


def _link(rel: str, target: str):
    def edit(run: Path, outside: Path) -> None:
        p = run / rel
        if p.is_dir():
            import shutil

            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        p.symlink_to(outside / target if target else Path("/dev/zero"))

    return edit


def _fifo(rel: str):
    def edit(run: Path, outside: Path) -> None:
        (run / rel).unlink()
        os.mkfifo(run / rel)

    return edit


def _files(*names: str):
    return _set(M0, files=["plain.png", *names])


def _extra(rel: str, kind: str):
    def edit(run: Path, outside: Path) -> None:
        p = run / "analyses/demo/default/epoch_0000" / rel
        if kind == "dir":
            p.mkdir()
        else:
            p.symlink_to(outside / "secret.txt")
        _files(rel)(run, outside)

    return edit


DEEP = "[" * 10000 + "]" * 10000
# (edit, the warning line's expected text) -- the page is still written, exit 0.
WARNED = {
    "scalars-as-list": (
        _set(M0, scalars=[1, 2]),
        f"{M0}: 'scalars' is not an object of numbers or strings; skipped",
    ),
    "scalars-nested": (
        _set(M0, scalars={"a": {"b": 1}}),
        "'scalars' is not an object of numbers or strings; skipped",
    ),
    "files-as-string": (
        _set(M0, files="plain.png"),
        "'files' is not a list of file names; skipped",
    ),
    "captions-int": (
        _set(M0, captions={"a": 1}),
        "'captions' is not an object of strings; skipped",
    ),
    "epoch-string": (
        _set(M0, epoch="<img src=x onerror=1>"),
        "'epoch' is not an integer or null; skipped",
    ),
    "epoch-elsewhere": (_set(M0, epoch=7), "'epoch' is 7 but its folder says 0; skipped"),
    "analysis-elsewhere": (
        _set(M0, analysis="never"),
        "'analysis' is 'never' but its folder says 'demo'; skipped",
    ),
    "scope-wrong": (_set(M0, scope="run"), "'scope' is 'run' but its folder says 'epoch'; skipped"),
    "params-list": (_set(M0, params=[1]), "'params' is not an object; skipped"),
    "version-float": (_set(M0, version=1.5), "'version' is not a string; skipped"),
    "format-other": (_set(M0, format="probe-result/99"), "format is not probe-result/1; skipped"),
    "no-analysis": (
        _write(M0, json.dumps({"format": "probe-result/1"})),
        "no 'analysis' field; skipped",
    ),
    "manifest-list": (_write(M0, "[]"), f"{M0}: not a JSON object; skipped"),
    "manifest-garbage": (
        _write(M0, "{not json"),
        "is not valid JSON (Expecting property name enclosed in double quotes at line "
        "1 column 2); skipped",
    ),
    "manifest-deep": (_write(M0, DEEP), f"{M0}: is nested more than 64 levels deep; skipped"),
    "manifest-nested-70": (
        _write(
            M0, '{"format": "probe-result/1", "analysis": "demo", "x": ' + "[" * 70 + "]" * 70 + "}"
        ),
        f"{M0}: is nested more than 64 levels deep; skipped",
    ),
    "manifest-5000-digits": (
        _write(
            M0, '{"format": "probe-result/1", "analysis": "demo", "seconds": ' + "9" * 5000 + "}"
        ),
        f"{M0}: holds an integer of 5,000 digits (at most 40 allowed); skipped",
    ),
    "manifest-not-utf8": (
        lambda run, out: (run / M0).write_bytes(b"\xff\xfe{}"),
        f"{M0}: is not UTF-8 text (byte 0); skipped",
    ),
    "manifest-too-big": (
        _write(M0, " " * (safeio.MAX_CONFIG_BYTES + 1) + "{}"),
        f"{M0}: is 1,048,579 bytes, more than the 1,048,576 allowed for this file; skipped",
    ),
    "manifest-fifo": (_fifo(M0), f"{M0}: is a FIFO (named pipe), not a regular file; skipped"),
    "manifest-link-dev-zero": (
        _link(M0, ""),
        f"{M0}: is a symbolic link, not a regular file (probe does not follow links here); skipped",
    ),
    "manifest-link-outside": (
        _link(M0, "sub/manifest.json"),
        f"{M0}: is a symbolic link, not a regular file (probe does not follow links here); skipped",
    ),
    "file-dotdot": (
        _files("../../../../outside/secret.txt"),
        "file '../../../../outside/secret.txt' leaves its result folder; not linked",
    ),
    "file-absolute": (_files("/etc/passwd"), "file '/etc/passwd' is an absolute path; not linked"),
    "file-symlink": (_extra("link.png", "link"), "file 'link.png' is a symlink; not linked"),
    "file-directory": (
        _extra("dir.png", "dir"),
        "file 'dir.png' is not a regular file; not linked",
    ),
    "file-backslash": (_files("..\\..\\x.png"), "is not a file name; not linked"),
    "result-dir-link": (
        _link("analyses/demo/default/epoch_0000", "sub"),
        "analyses/demo/default/epoch_0000: a symlink; skipped (probe follows no link out of a run)",
    ),
    "analyses-link": (_link("analyses", "sub"), "analyses: a symlink; no results shown"),
    "failure-list": (
        _write("analyses/boom/default/epoch_0001.failed.json", "[1]"),
        "epoch_0001.failed.json: not a JSON object; skipped",
    ),
    "failure-error-dict": (
        _set("analyses/boom/default/epoch_0001.failed.json", error={"a": 1}),
        "'error' is not a string; skipped",
    ),
    "failure-epoch-elsewhere": (
        _set("analyses/boom/default/epoch_0001.failed.json", epoch=0),
        "'epoch' is 0 but its folder says 1; skipped",
    ),
    "failure-params-list": (
        _set("analyses/boom/default/epoch_0001.failed.json", params=["x"]),
        "'params' is not an object; skipped",
    ),
    "failure-traceback-int": (
        _set("analyses/boom/default/epoch_0001.failed.json", traceback=12),
        "'traceback' is not a string; skipped",
    ),
    "failure-link": (
        _link("analyses/boom/default/epoch_0001.failed.json", "secret.txt"),
        "epoch_0001.failed.json: a symlink; skipped",
    ),
    "metrics-middle-line": (
        _write("metrics.jsonl", '{"epoch": 0}\n[1, 2]\n{"epoch": 1}\n'),
        "metrics.jsonl: line 2 is not a metrics record (no integer 'epoch'); line skipped",
    ),
    "metrics-epoch-string": (
        _write("metrics.jsonl", '{"epoch": "1"}\n{"epoch": 1}\n'),
        "line 1 is not a metrics record (no integer 'epoch'); line skipped",
    ),
    "metrics-deep": (
        _write("metrics.jsonl", DEEP + '\n{"epoch": 1}\n'),
        "metrics.jsonl: line 1 is nested more than 64 levels deep; line skipped",
    ),
    "metrics-link": (
        _link("metrics.jsonl", "secret.txt"),
        "metrics.jsonl: is a symbolic link, not a regular file (probe does not follow links "
        "here); no metrics shown",
    ),
}


@pytest.mark.parametrize("case", list(WARNED))
def test_crafted_file_is_skipped_with_one_warning(tmp_path, empty_registry, sentinel, case):
    edit, expected = WARNED[case]
    run = clean_run(tmp_path / "run")
    edit(run, sentinel)
    before = tree_digest(sentinel)
    r = invoke(report_command, run)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    warnings = [ln for ln in lines if ln.startswith("warning: ")]
    assert len(warnings) == 1 and expected in warnings[0], r.output
    assert lines[-1] == f"wrote {run / REPORT_DIR / INDEX}" and len(lines) == 2, r.output
    page = (run / REPORT_DIR / INDEX).read_text()
    assert "secret-canary" not in page
    assert "Skipped files" in page
    assert tree_digest(sentinel) == before


# (edit, the error line's expected text) -- nothing written, exit 1.
REFUSED = {
    "config-deep": (_write("config.json", DEEP), "config.json: is nested more than 64 levels deep"),
    "config-list": (
        _write("config.json", "[]"),
        "config.json: not a probe config (no 'train' table)",
    ),
    "config-train-string": (
        _write("config.json", '{"train": "x"}'),
        "config.json: not a probe config (no 'train' table)",
    ),
    "config-digits": (
        _write("config.json", '{"train": {"epochs": ' + "1" * 5000 + "}}"),
        "config.json: holds an integer of 5,000 digits (at most 40 allowed)",
    ),
    "config-dev-zero": (
        _link("config.json", ""),
        "config.json: is a symbolic link, not a regular file (probe does not follow links here)",
    ),
    "config-outside": (
        _link("config.json", "secret.txt"),
        "config.json: is a symbolic link, not a regular file (probe does not follow links here)",
    ),
    "report-link": (
        _link("report", "sub"),
        "report: is a symlink; probe writes no report through a link (remove it)",
    ),
    "report-file": (
        _write("report", "x"),
        "report: is not a directory (move it away to write the report)",
    ),
    "report-user-files": (
        lambda run, out: ((run / "report").mkdir(), (run / "report/NOTES.md").write_text("mine")),
        "report: holds files probe did not write (NOTES.md); move them away to rebuild the report",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_crafted_file_is_refused_with_one_line(tmp_path, empty_registry, sentinel, case):
    edit, expected = REFUSED[case]
    run = clean_run(tmp_path / "run")
    edit(run, sentinel)
    before = tree_digest(sentinel)
    r = invoke(report_command, run)
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("error: ") and expected in r.output, r.output
    assert tree_digest(sentinel) == before
    assert (run / "report/NOTES.md").read_text() == "mine" if case == "report-user-files" else True


@pytest.mark.parametrize("where", ["mkdtemp", "fsync"])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.ENAMETOOLONG, errno.EACCES])
def test_report_write_failure_is_one_line(tmp_path, empty_registry, monkeypatch, err, where):
    """(Permission bits mean nothing to root, so the failures are injected where
    the OS reports them.)"""
    run = clean_run(tmp_path / "run")

    def fail(*a, **k):
        raise OSError(err, os.strerror(err))

    if where == "mkdtemp":  # making the new report directory beside the old one
        monkeypatch.setattr(atomic.tempfile, "mkdtemp", fail)
    else:  # writing index.html inside it (a full disk shows at fsync at the latest)
        monkeypatch.setattr(atomic.os, "fsync", fail)
    r = invoke(report_command, run)
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert r.output == f"error: {run / REPORT_DIR}: cannot write the report ({os.strerror(err)})\n"
    assert not (run / REPORT_DIR).exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temporary left behind


def _status(obj):
    def edit(sweep: Path, outside: Path) -> None:
        write_json(sweep / "status.json", obj)

    return edit


def _points(*names):
    def edit(sweep: Path, outside: Path) -> None:
        d = json.loads((sweep / "sweep.json").read_text())
        d["points"] += [{"name": n, "values": {"lr": 0.5}} for n in names]
        write_json(sweep / "sweep.json", d)

    return edit


def _point_link(sweep: Path, outside: Path) -> None:
    (sweep / "evil").symlink_to(outside)
    _points("evil")(sweep, outside)


SWEEP_WARNED = {
    "status-list": (_status([1]), "status.json: not a sweep status (no 'runs' object); ignored"),
    "status-runs-list": (
        _status({"runs": ["lr=0.1"]}),
        "status.json: not a sweep status (no 'runs' object); ignored",
    ),
    "status-entry-string": (
        _status({"runs": {"lr=0.1": "failed"}}),
        "the entry of 'lr=0.1' is not a status (state and error strings); ignored",
    ),
    "status-error-dict": (
        _status({"runs": {"lr=0.1": {"state": "failed", "error": {"x": 1}}}}),
        "the entry of 'lr=0.1' is not a status",
    ),
    "status-deep": (
        lambda s, o: (s / "status.json").write_text(DEEP),
        "status.json: is nested more than 64 levels deep; ignored",
    ),
    "point-absolute": (
        None,
        "sweep.json: point 4: 'OUTSIDE' is not a folder name (it must be one name, no "
        "'/' or '..'); skipped",
    ),
    "point-dotdot": (
        _points("../x"),
        "sweep.json: point 4: '../x' is not a folder name (it must be one name, no "
        "'/' or '..'); skipped",
    ),
    "point-dot": (
        _points(".."),
        "sweep.json: point 4: '..' is not a folder name (it must be one name, no "
        "'/' or '..'); skipped",
    ),
    "point-long": (
        _points("x" * 300),
        "sweep.json: point 4: a name of 300 bytes is longer than a folder name "
        "may be (255); skipped",
    ),
    "point-symlink": (
        _point_link,
        "/evil: is a symbolic link; probe never writes through a link out of",
    ),
    "point-int": (
        _points(7),
        "sweep.json: point 4: 7 is not a folder name (it must be one name, no "
        "'/' or '..'); skipped",
    ),
    "point-twice": (_points("lr=0.1"), "point 4 ('lr=0.1') is listed twice; skipped"),
}


@pytest.mark.parametrize("command", ["report", "compare"])
@pytest.mark.parametrize("case", list(SWEEP_WARNED))
def test_crafted_sweep_files_are_warned_about_once(
    tmp_path, empty_registry, sentinel, case, command
):
    edit, expected = SWEEP_WARNED[case]
    sweep = make_sweep(tmp_path / "sw", CLEAN)
    if edit is None:  # a point naming a folder outside the sweep by its absolute path
        edit, expected = _points(str(sentinel)), expected.replace("OUTSIDE", str(sentinel))
    edit(sweep, sentinel)
    before = tree_digest(sentinel)
    cmd = report_command if command == "report" else compare.compare_command
    r = invoke(cmd, sweep, *(["--no-plots"] if command == "compare" else []))
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.output.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and expected in warnings[0], r.output
    assert "Traceback" not in r.output
    assert tree_digest(sentinel) == before and not (sentinel / REPORT_DIR).exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        (DEEP, "sweep.json: is nested more than 64 levels deep (not a readable sweep file)"),
        ("[]", "sweep.json: not a readable sweep file (no 'points' list)"),
        ('{"points": [], "grid": 3}', "sweep.json: not a readable sweep file (no 'grid' object)"),
    ],
)
@pytest.mark.parametrize("command", ["report", "compare"])
def test_unreadable_sweep_file_is_one_error_line(tmp_path, empty_registry, text, expected, command):
    sweep = make_sweep(tmp_path / "sw", CLEAN)
    (sweep / "sweep.json").write_text(text)
    cmd = report_command if command == "report" else compare.compare_command
    r = invoke(cmd, sweep, *(["--no-plots"] if command == "compare" else []))
    assert r.exit_code == 1 and r.output.count("\n") == 1 and r.output.startswith("error: "), (
        r.output
    )
    if (
        command == "compare" or "points" not in expected
    ):  # the page reads sweep.json itself, compare its points
        assert expected in r.output, r.output


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.ENAMETOOLONG])
def test_compare_write_failure_is_one_line(tmp_path, empty_registry, monkeypatch, err):
    sweep = make_sweep(tmp_path / "sw", CLEAN)

    def fail(*a, **k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", fail)
    r = invoke(compare.compare_command, sweep, "--no-plots", "--out", tmp_path / "out")
    assert r.exit_code == 1 and r.output.splitlines()[-1] == (
        f"error: {tmp_path / 'out' / 'table.csv'}: could not write ({os.strerror(err)}); "
        "nothing was replaced"
    ), r.output


def test_compare_default_out_that_is_a_symlink_is_refused(tmp_path, empty_registry, sentinel):
    sweep = make_sweep(tmp_path / "sw", CLEAN)
    (sweep / "compare").symlink_to(sentinel)
    before = tree_digest(sentinel)
    r = invoke(compare.compare_command, sweep, "--no-plots")
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert r.output == (
        f"error: {sweep / 'compare'}: a symlink; probe writes nothing through a link "
        "(remove it or give --out)\n"
    )
    assert tree_digest(sentinel) == before


@pytest.mark.parametrize(
    "value", ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "plain"]
)
def test_csv_cells_never_start_a_formula(value):
    text = table.to_csv(["run", value], [{"run": value, value: value}])
    import csv
    import io

    rows = list(csv.reader(io.StringIO(text)))
    assert all(not cell.startswith(table.FORMULA_START) for row in rows for cell in row)
    assert rows[1][0] == (value if value == "plain" else "'" + value)


def test_terminal_table_shows_control_characters_escaped(tmp_path):
    row = rows.RunRow(
        tmp_path, "a\x1b[2Jb\u202e", {}, [{"epoch": 0, "val_acc": 0.5}], state="\x07done"
    )
    columns, records = table.table([row], [])
    out = table.render(columns, records, [], show_run=True)
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert "a\\u001b[2Jb\\u202e" in out and "\\u0007done" in out


# --- older versions (#12, item 3) -----------------------------------------------------------------


def test_only_current_version_results_are_shown_with_the_command_for_older_ones(tmp_path):
    run = clean_run(tmp_path / "run")
    inst, _ = installed(CLEAN)
    inst["demo"].version = "2"  # both demo results are version 1 now: older
    d = run / "analyses/demo/default/epoch_0001/manifest.json"
    m = json.loads(d.read_text())
    write_json(d, {**m, "version": "2", "scalars": {"value": 42.0}})  # epoch 1 is current
    report_run(run, installed=(inst, ""), warn=lambda m: None)
    page = Parsed((run / REPORT_DIR / INDEX).read_text())
    text = "".join(page.text)
    assert "1 result(s) of older version(s) 1 not shown" in text
    assert f"probe analyze {run} --plugin demo --epochs 0" in text
    # sharp has only results of version 1 while 2 is installed: listed as older, not
    # shown, not "not computed"
    assert "Older versions only" in text and "a-sharp-default" not in page.ids
    assert f"probe analyze {run} --plugin sharp --epochs all" in text
    blob = next(json.loads(b) for a, b in page.scripts if a.get("type") == "application/json")
    assert blob["epochs"] == [1]


# --- in a real browser ----------------------------------------------------------------------------

DOM = """return {tags: \
Array.from(new Set(Array.from(document.querySelectorAll('*')).map(e => e.tagName))).sort(),
  attrs: Array.from(new Set(Array.from(document.querySelectorAll('*')).flatMap(e => \
e.getAttributeNames()))).sort(),
  ids: Array.from(document.querySelectorAll('section[id]')).map(e => e.id),
  scripts: document.scripts.length, footer: !!document.querySelector('footer'),
  pwned: typeof window.__pwned, urls: \
Array.from(document.querySelectorAll('[href],[src]')).map(e => e.href || e.src)}"""


def _dom(driver, page: Path) -> dict:
    test_report._open(driver, page)
    # drive the epoch browsers, so captions from the inline JSON go through the script too
    driver.execute_script("document.querySelectorAll('.epochs .prev').forEach(b => b.click())")
    return driver.execute_script(DOM)


@pytest.fixture(scope="module")
def clean_dom(browser, tmp_path_factory):
    run_page, sweep_page = build(tmp_path_factory.mktemp("clean-dom"), {k: CLEAN for k in CONTEXTS})
    return _dom(browser, run_page), _dom(browser, sweep_page)


@pytest.mark.parametrize("key", list(HOSTILE))
def test_hostile_everything_runs_no_script_in_a_browser(browser, clean_dom, tmp_path, key):
    run_page, sweep_page = build(tmp_path, dict.fromkeys(CONTEXTS, HOSTILE[key]))
    for page, clean in ((run_page, clean_dom[0]), (sweep_page, clean_dom[1])):
        dom = _dom(browser, page)
        assert dom["pwned"] == "undefined", page
        assert dom["tags"] == clean["tags"] and dom["attrs"] == clean["attrs"], (
            dom["tags"],
            dom["attrs"],
        )
        assert dom["scripts"] == clean["scripts"] and dom["footer"]
        assert (
            len(dom["ids"]) == len(clean["ids"]) and dom["ids"][-1] == clean["ids"][-1]
        )  # no section swallowed
        assert all(u.startswith("file:") for u in dom["urls"]), dom["urls"]
    run_dir = (
        sweep_page.parent.parent / fname(HOSTILE[key]) / REPORT_DIR / INDEX
    )  # a run page of the sweep, by link
    dom = _dom(browser, run_dir)
    assert dom["pwned"] == "undefined" and dom["footer"]


# --- any JSON in any field: never a traceback (Hypothesis) ----------------------------------------


def _json_values():
    from hypothesis import strategies as st

    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=8,
    )


FIELDS = (
    [("manifest", k) for k in MANIFEST_FIELDS]
    + [("failure", k) for k in FAILURE_FIELDS]
    + [
        ("config", k)
        for k in ("train", "model_spec", "versions", "classes", "num_params", "data_source")
    ]
    + [("metrics", k) for k in ("epoch", "val_acc", "train_acc", "epoch_seconds", "lr")]
)


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory) -> Path:
    return clean_run(tmp_path_factory.mktemp("fuzz") / "run")


@pytest.mark.parametrize("where, key", FIELDS, ids=[f"{w}.{k}" for w, k in FIELDS])
def test_any_json_in_any_field_is_shown_or_skipped_never_a_traceback(fuzz_run, where, key):
    from hypothesis import HealthCheck, given, settings

    files = {
        "manifest": fuzz_run / M0,
        "failure": fuzz_run / "analyses/boom/default/epoch_0001.failed.json",
        "config": fuzz_run / "config.json",
        "metrics": fuzz_run / "metrics.jsonl",
    }
    original = files[where].read_text()

    @settings(
        max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(value=_json_values())
    def check(value):
        if where == "metrics":
            rows = [json.loads(line) for line in original.splitlines()]
            rows[-1][key] = value
            files[where].write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            d = json.loads(original)
            d[key] = value
            files[where].write_text(json.dumps(d))
        warnings: list[str] = []
        try:
            page = report_run(
                fuzz_run, force=True, installed=installed(CLEAN), warn=warnings.append
            ).path
        except ProbeError as exc:  # only a config.json that is no config may stop the page
            assert where == "config" and key == "train" and "\n" not in str(exc), exc
            return
        assert all("\n" not in w for w in warnings) and len(warnings) <= 1, warnings
        assert Parsed(page.read_text()).ids >= {"config", "metrics", "missing"}

    try:
        check()
    finally:
        files[where].write_text(original)


def test_a_crafted_manifest_in_a_sweep_run_is_one_warning_for_table_and_page(
    tmp_path, empty_registry
):
    sweep = make_sweep(tmp_path / "sw", CLEAN)
    _set(M0, scalars=[1])(sweep / "lr=0.1", tmp_path)
    r = invoke(report_command, sweep)
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.output.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and f"lr=0.1/{M0}: 'scalars' is not an object" in warnings[0], (
        r.output
    )


def test_compare_takes_analysis_scalars_of_the_installed_version_only(tmp_path):
    run = clean_run(tmp_path / "run")  # demo's results are version 1, with the scalar value=1.5
    assert rows.analysis_scalars(run, print, {"demo": "1"})["demo.value"] == 1.5
    assert "demo.value" not in rows.analysis_scalars(run, print, {"demo": "2"})
    assert (
        rows.analysis_scalars(run, print, None)["demo.value"] == 1.5
    )  # nothing installed to compare with
