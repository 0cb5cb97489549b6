"""What the code's structure is, measured from its source: imports, cycles, sizes,
private reach-through.

Used by tests/test_architecture.py (no import cycle in probe/, no plugin importing a
private name or a module outside the public API) and runnable by hand for the
numbers ARCHITECTURE.md quotes:

    python tests/architecture.py            # one line per measure
    python tests/architecture.py --json     # the same as JSON

Reads the files as text with `ast`; imports nothing of probe.
"""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "probe"
PLUGINS = "plugins"  # installed as probe_plugins


@dataclass
class Import:
    """One import of a probe module by another: where, what, and whether it
    sits inside a function."""

    source: str  # importing module, dotted
    target: str  # imported module, dotted
    names: tuple[str, ...]  # names taken from it (empty for `import x`)
    line: int
    in_function: bool


@dataclass
class Module:
    name: str
    path: Path
    lines: int
    imports: list[Import] = field(default_factory=list)
    functions: list[tuple[str, int]] = field(default_factory=list)  # (qualified name, lines)
    heavy: set[str] = field(default_factory=set)  # heavy libraries imported at module level


# Layers, bottom first: a module may import its own layer's modules and those below, never above.
# ARCHITECTURE.md explains each; this table is what the test holds the code to.
LAYERS: list[tuple[str, ...]] = [
    ("probe.errors", "probe.version"),
    ("probe.io",),
    ("probe.contract",),
    ("probe.numerics",),
    ("probe.library",),
    ("probe.datasets",),
    ("probe.rundir",),
    ("probe.training",),
    ("probe.analysis",),
    ("probe.studies",),
    ("probe.report",),
    (
        "probe",
        "probe.cli",
        "probe.testing",
        "probe.api",
        "probe.data",
        "probe.analyze",
        "probe.integrations",
    ),
]
# What start-up must not pay for: an import inside a function is there to keep one of these out.
HEAVY = {
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "sklearn",
    "matplotlib",
    "h5py",
    "safetensors",
    "jinja2",
    "dask",
    "distributed",
    "openTSNE",
    "PIL",
    "pandas",
    "lightning",
}


def layer_of(module: str) -> int:
    best, depth = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > depth:
                best, depth = i, len(p)
    return best


def module_name(path: Path, root: Path, package: str) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [package, *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute dotted name of a relative import (`from ..x import y` inside `current`)."""
    if level == 0:
        return module or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


class _Visitor(ast.NodeVisitor):
    def __init__(self, mod: Module, is_package: bool, known: set[str]):
        self.mod, self.is_package, self.known = mod, is_package, known
        self.depth = 0
        self.scope: list[str] = []

    def _func(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        qual = ".".join([*self.scope, node.name])
        end = getattr(node, "end_lineno", node.lineno)
        self.mod.functions.append((qual, end - node.lineno + 1))
        self.depth += 1
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()
        self.depth -= 1

    visit_FunctionDef = _func
    visit_AsyncFunctionDef = _func

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_If(self, node: ast.If) -> None:
        # `if TYPE_CHECKING:` imports run in no process: they are not imports of the running code
        test = node.test
        name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", "")
        if name == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _add(self, target: str, names: tuple[str, ...], line: int) -> None:
        # `from probe.x import y` where y is itself a module: the import is of probe.x.y
        hits = []
        for n in names:
            sub = f"{target}.{n}"
            if sub in self.known:
                hits.append((sub, ()))
        plain = tuple(n for n in names if f"{target}.{n}" not in self.known)
        if target in self.known and (plain or not names):
            hits.append((target, plain))
        for t, ns in hits:
            if t != self.mod.name:
                self.mod.imports.append(Import(self.mod.name, t, ns, line, self.depth > 0))

    def _heavy(self, name: str) -> None:
        if self.depth == 0 and name.split(".")[0] in HEAVY:
            self.mod.heavy.add(name.split(".")[0])

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._heavy(alias.name)
            name = alias.name
            while name and name not in self.known:
                name = name.rpartition(".")[0]
            if name:
                self._add(name, (), node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        target = _resolve(self.mod.name, self.is_package, node.level, node.module)
        if node.level == 0:
            self._heavy(target)
        names = tuple(a.name for a in node.names)
        self._add(target, names, node.lineno)


def read_tree(folder: Path, package: str, known_extra: set[str] | None = None) -> dict[str, Module]:
    """Every module under `folder` (as package `package`), with its imports of modules in
    `known_extra` or itself."""
    paths = sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)
    names = {module_name(p, folder, package): p for p in paths}
    known = set(names) | (known_extra or set())
    mods = {}
    for name, path in names.items():
        text = path.read_text()
        mod = Module(name, path, text.count("\n") + (0 if text.endswith("\n") else 1))
        _Visitor(mod, path.name == "__init__.py", known).visit(ast.parse(text, str(path)))
        mods[name] = mod
    return mods


def cycles(mods: dict[str, Module], *, include_function_imports: bool = True) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each
    sorted; the import cycles."""
    graph = {m: set() for m in mods}
    for m in mods.values():
        for imp in m.imports:
            if imp.target in graph and (include_function_imports or not imp.in_function):
                graph[m.name].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            strong(v)
    return sorted(out)


def _where(path: Path) -> str:
    """A path as the messages show it: relative to the checkout where it lies inside."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def upward_imports(mods: dict[str, Module]) -> list[str]:
    """Imports from a higher layer (or of a module in no layer): each breaks the one
    direction of imports."""
    bad = []
    for m in mods.values():
        for imp in m.imports:
            src, dst = layer_of(m.name), layer_of(imp.target)
            if src < 0 or dst < 0 or dst > src:
                bad.append(
                    f"{_where(m.path)}:{imp.line}: {m.name} (layer {src}) imports {imp.target} "
                    f"(layer {dst})"
                )
    return bad


def heavy_closure(mods: dict[str, Module]) -> dict[str, set[str]]:
    """The heavy libraries each module brings in at import time, through its
    module-level probe imports too."""
    out: dict[str, set[str]] = {}

    def visit(name: str, seen: set[str]) -> set[str]:
        if name in out:
            return out[name]
        if name in seen or name not in mods:
            return set()
        seen.add(name)
        found = set(mods[name].heavy)
        for imp in mods[name].imports:
            if not imp.in_function:
                found |= visit(imp.target, seen)
        # a package's __init__ runs before any of its modules
        parent = name.rpartition(".")[0]
        if parent:
            found |= visit(parent, seen)
        out[name] = found
        return found

    for name in mods:
        visit(name, set())
    return out


def needless_function_imports(mods: dict[str, Module]) -> list[str]:
    """In-function imports of probe modules that keep no heavy library out of start-up.

    One is needed only where the importing module is light (imports nothing heavy at module level,
    so a light command such as `probe --help` can import it) and the imported module is heavy.
    """
    heavy = heavy_closure(mods)
    bad = []
    for m in mods.values():
        for imp in m.imports:
            if not imp.in_function:
                continue
            if heavy[m.name] or not heavy.get(imp.target):
                why = (
                    "its module is heavy already"
                    if heavy[m.name]
                    else f"{imp.target} imports nothing heavy"
                )
                bad.append(
                    f"{_where(m.path)}:{imp.line}: imports {imp.target} inside a function, "
                    f"but {why}: import it at the top"
                )
    return bad


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_reach(plugins: dict[str, Module], public_modules: set[str]) -> list[str]:
    """Plugin imports of a private name, a private module, or a probe module
    outside the public API."""
    bad = []
    for m in plugins.values():
        for imp in m.imports:
            if not imp.target.startswith(PACKAGE + ".") and imp.target != PACKAGE:
                continue
            where = f"{_where(m.path)}:{imp.line}"
            if any(_is_private(part) for part in imp.target.split(".")):
                bad.append(f"{where}: imports the private module {imp.target}")
            elif not any(
                imp.target == p or (p != PACKAGE and imp.target.startswith(p + "."))
                for p in public_modules
            ):  # `probe` itself is public, not every module under it
                bad.append(f"{where}: imports {imp.target}, which is not part of the public API")
            for n in imp.names:
                if _is_private(n):
                    bad.append(f"{where}: imports the private name {imp.target}.{n}")
    return bad


def measure() -> dict:
    probe = read_tree(ROOT / PACKAGE, PACKAGE)
    plugins = read_tree(ROOT / PLUGINS, "probe_plugins", set(probe))
    packages = sorted({m.name for m in probe.values() if m.path.name == "__init__.py"})
    largest = max(probe.values(), key=lambda m: m.lines)
    longest = max(
        ((f"{m.name}.{q}", n) for m in probe.values() for q, n in m.functions), key=lambda t: t[1]
    )
    internal = [i for m in probe.values() for i in m.imports if i.in_function]
    public = set(public_api_modules(probe))
    return {
        "modules": len(probe),
        "packages": len(packages),
        "largest_module": [largest.name, largest.lines],
        "modules_over_700_lines": sorted(m.name for m in probe.values() if m.lines > 700),
        "import_cycles": cycles(probe),
        "upward_imports": upward_imports(probe),
        "needless_function_imports": needless_function_imports(probe),
        "in_function_imports_between_probe_modules": len(internal),
        "plugin_private_imports": private_reach(plugins, public),
        "longest_function": list(longest),
    }


def public_api_modules(probe: dict[str, Module]) -> list[str]:
    """The modules a plugin may import: `probe`, those in probe/__init__.py's
    PUBLIC_MODULES and their modules."""
    init = ROOT / PACKAGE / "__init__.py"
    tree = ast.parse(init.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", "") == "PUBLIC_MODULES" for t in node.targets
        ):
            return [PACKAGE, *(f"{PACKAGE}.{n}" for n in ast.literal_eval(node.value))]
    return [PACKAGE]


if __name__ == "__main__":
    result = measure()
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            if (
                isinstance(v, list)
                and v
                and isinstance(v[0], (list, str))
                and k not in ("largest_module", "longest_function")
            ):
                print(f"{k}: {len(v)}")
                for item in v:
                    print(f"    {item}")
            else:
                print(f"{k}: {v}")
