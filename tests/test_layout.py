"""The project's shape: the client imports neither Dagster nor psycopg, no import cycle anywhere,
the sandbox stands alone, test machinery stays under tests/, no production function is over 60
lines, and the README and docs link only to files that exist in the repository.

Imports are read with :mod:`ast`, so every import statement counts wherever it stands: at module
level, inside a function (a deferred import still closes a cycle the first time it runs), or under
``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("taptouch_resource", "taptouch_sandbox", "pipelines")
CLIENT_MODULES = ("api", "auth", "client", "errors", "http", "retry", "tokens", "jsonutil", "listing")


# --- the import graph -------------------------------------------------------------------------


def discover_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """``{dotted module name: path}`` for every ``.py`` file of ``packages`` below ``root``
    (a package is named by its ``__init__.py``)."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _longest_known(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``module`` imports, anywhere in its file.

    ``import a.b.c`` is an edge to ``a.b.c`` (or its longest known prefix); ``from a.b import c``
    is an edge to ``a.b.c`` when that is a module, otherwise to ``a.b``; relative imports are
    resolved against the module's package."""
    is_package = path.name == "__init__.py"
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _longest_known(alias.name, modules)
                if target:
                    targets.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package_parts[: len(package_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in modules else _longest_known(base, modules)
                if target:
                    targets.add(target)
    targets.discard(module)
    return targets


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    modules = discover_modules(root, packages)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module, each as a path that
    starts and ends with the same module (``[a, b, a]``), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(node: str) -> None:  # Tarjan; the graphs here are a few dozen modules deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                strongconnect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)

    cycles = []
    for component in components:  # the shortest way from the smallest member back to itself
        start = min(component)
        parent: dict[str, str | None] = {start: None}
        queue, last = deque([start]), None
        while last is None:
            node = queue.popleft()
            for succ in sorted(graph[node] & component):
                if succ == start:
                    last = node
                    break
                if succ not in parent:
                    parent[succ] = node
                    queue.append(succ)
        path = [start]
        while last is not None:
            path.append(last)
            last = parent[last]
        cycles.append(path[::-1])
    return sorted(cycles)


# --- 1a: the client package without Dagster or psycopg -----------------------------------------


def test_client_modules_load_neither_dagster_nor_psycopg():
    code = (
        "import sys\n"
        "import taptouch_resource.client, taptouch_resource.auth, taptouch_resource.api\n"
        "import taptouch_resource.errors, taptouch_resource.retry, taptouch_resource.tokens\n"
        "from taptouch_resource import TaptouchClient, ClientCredentialsAuth\n"
        "print(sorted(m for m in ('dagster', 'psycopg') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_public_names_of_the_package():
    import dagster as dg

    from taptouch_resource import (
        ClientCredentialsAuth,
        InvalidRecord,
        TaptouchAPIError,
        TaptouchAuthError,
        TaptouchClient,
        TaptouchConfigError,
        TaptouchError,
        TaptouchProtocolError,
        TaptouchRateLimitError,
        TaptouchResource,
    )

    assert issubclass(TaptouchResource, dg.ConfigurableResource)
    assert isinstance(TaptouchClient, type) and isinstance(ClientCredentialsAuth, type)
    for error in (
        TaptouchAPIError,
        TaptouchAuthError,
        TaptouchConfigError,
        TaptouchProtocolError,
        TaptouchRateLimitError,
    ):
        assert issubclass(error, TaptouchError), error
    assert issubclass(InvalidRecord, Exception)


# --- 1b: no import cycle ---------------------------------------------------------------------


def test_no_import_cycle_in_the_project():
    graph = import_graph(ROOT, PACKAGES)
    assert len(graph) > 30, sorted(graph)  # the walk found the project's modules
    assert sum(map(len, graph.values())) > 50  # and their imports, across packages:
    assert any(target.startswith("taptouch_resource") for target in graph["pipelines.sync"])
    cycles = find_cycles(graph)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


# --- no production function over 60 lines -----------------------------------------------------
MAX_FUNCTION_LINES = 60
# Declarative tables may be longer (none is a function today): "module.qualname" -> why.
LONG_FUNCTIONS_ALLOWED: dict[str, str] = {}


def long_functions(root: Path, packages: tuple[str, ...], limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``module.qualname`` -> lines of every def (methods and nested defs included, each counted
    with what it nests) longer than ``limit``."""
    found: dict[str, int] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = child.end_lineno - child.lineno + 1
                if lines > limit:
                    found[f"{prefix}{child.name}"] = lines
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            walk(ast.parse(path.read_text(), str(path)), f"{module}.")
    return found


def test_no_production_function_over_60_lines():
    too_long = long_functions(ROOT, (*PACKAGES, "bench"))
    assert {name: n for name, n in too_long.items() if name not in LONG_FUNCTIONS_ALLOWED} == {}


def test_the_function_length_scan_counts_methods_and_nested_defs(tmp_path):
    def block(indent: int) -> str:  # 60 lines
        return "".join(f"{' ' * indent}x{i} = {i}\n" for i in range(60))

    source = (
        "def short():\n    return 1\n\n\ndef long():\n" + block(4) + "\n\nclass C:\n    def method(self):\n"
        "        def inner():\n" + block(12) + "\n        return inner\n"
    )
    _write_package(tmp_path, {"pkg/__init__.py": "", "pkg/m.py": source})
    assert long_functions(tmp_path, ("pkg",)) == {"pkg.m.long": 61, "pkg.m.C.method": 64, "pkg.m.C.method.inner": 61}


def _write_package(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cycle_finder_sees_a_deferred_relative_cycle(tmp_path):
    _write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from . import b\n",  # `from pkg import b`: b is a module, so the edge is a -> b
            "pkg/b.py": "import os\n\ndef later():\n    from .sub.c import thing\n",  # deferred, relative
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "from pkg.a import name\nthing = 1\n",
            "pkg/d.py": "import pkg.sub.c\nimport json\n",  # imports into the cycle, is not part of it
        },
    )
    graph = import_graph(tmp_path, ("pkg",))
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.a"},
        "pkg.d": {"pkg.sub.c"},
    }
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_cycle_finder_on_a_package_init_and_two_cycles(tmp_path):
    _write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from .x import X\n",  # X is a name, so the edge is to pkg.x
            "pkg/x.py": "from pkg import helper\nX = 1\n",  # helper is a name in pkg/__init__: edge to pkg
            "pkg/y.py": "from . import z\n",
            "pkg/z.py": "if True:\n    from pkg import y\n",
        },
    )
    assert find_cycles(import_graph(tmp_path, ("pkg",))) == [["pkg", "pkg.x", "pkg"], ["pkg.y", "pkg.z", "pkg.y"]]


def test_cycle_finder_passes_an_acyclic_package(tmp_path):
    _write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from .a import A\n",
            "pkg/a.py": "from .b import B\nA = B\n",
            "pkg/b.py": "B = 1\n",
        },
    )
    assert import_graph(tmp_path, ("pkg",)) == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": set()}
    assert find_cycles(import_graph(tmp_path, ("pkg",))) == []


# --- 1c: what each package may import ---------------------------------------------------------


def _imported_names(path: Path) -> list[str]:
    """Every module name an import statement in ``path`` names (``from a import b``: ``a`` and
    ``a.b``), wherever it stands. Relative imports are left out."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _top_level(names: list[str], forbidden: set[str]) -> list[str]:
    return sorted({n for n in names if n.split(".")[0] in forbidden})


@pytest.mark.parametrize("module", CLIENT_MODULES)
def test_client_module_never_imports_dagster_or_psycopg(module):
    path = ROOT / "taptouch_resource" / f"{module}.py"
    assert _top_level(_imported_names(path), {"dagster", "psycopg"}) == []


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """``start`` and every module it imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph[module]
    return seen


@pytest.mark.parametrize("module", CLIENT_MODULES)
def test_client_module_reaches_only_client_modules(module):
    """Not ``resource`` (Dagster) nor the package ``__init__`` (which can load it), even through a
    relative or deferred import."""
    client = {f"taptouch_resource.{name}" for name in CLIENT_MODULES}
    assert reachable(import_graph(ROOT, PACKAGES), f"taptouch_resource.{module}") - client == set()


def test_the_import_scan_sees_deferred_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import httpx\n\ndef f():\n    import psycopg.rows\n    from dagster import asset\n")
    assert _top_level(_imported_names(path), {"dagster", "psycopg"}) == ["dagster", "dagster.asset", "psycopg.rows"]


def test_sandbox_imports_nothing_from_the_pipelines_or_the_resource():
    offending = {}
    for path in sorted((ROOT / "taptouch_sandbox").rglob("*.py")):
        names = _imported_names(path)
        bad = [
            n
            for n in names
            if n == "pipelines"
            or n.startswith("pipelines.")
            or n.startswith("taptouch_resource.resource")
            or n == "taptouch_resource.TaptouchResource"
        ]
        if bad:
            offending[str(path.relative_to(ROOT))] = bad
    assert offending == {}


# --- 3: test machinery stays under tests/ -----------------------------------------------------


def _imports_from_tests(path: Path) -> list[str]:
    return [n for n in _imported_names(path) if n == "tests" or n.startswith("tests.")]


def test_the_packages_import_nothing_from_tests():
    importers = {
        str(path.relative_to(ROOT)): _imports_from_tests(path)
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {path: names for path, names in importers.items() if names} == {}


SCRIPTS = sorted(str(p.relative_to(ROOT)) for d in ("bench", "deploy") for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_take_test_machinery_only_from_tests_support(script):
    """The benchmark and measurement scripts may use the test machinery, from its one home."""
    outside = [
        n for n in _imports_from_tests(ROOT / script) if n != "tests.support" and not n.startswith("tests.support.")
    ]
    assert outside == []


# --- 1d: the README and the docs ---------------------------------------------------------------

# [text](target) and ![alt](target), and reference definitions `[label]: target`
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def relative_links(markdown: str) -> list[str]:
    """The link targets of ``markdown`` that point to a file (no URL scheme, not only a
    ``#fragment``), without their fragment. Code fences and inline code are not links."""
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", markdown))
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [
        t.split("#", 1)[0] for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t) and not t.startswith("#")
    ]


def broken_links(root: Path, documents: list[Path]) -> list[str]:
    broken = []
    for document in documents:
        for target in relative_links(document.read_text()):
            resolved = (document.parent / target).resolve()
            where = f"{document.relative_to(root)}: {target}"
            if not resolved.is_relative_to(root):
                broken.append(f"{where} (outside the repository)")
            elif not resolved.exists():
                broken.append(f"{where} (no such file)")
    return broken


def test_readme_fits_in_250_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250


def test_every_relative_link_in_the_readme_and_docs_resolves_inside_the_repository():
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(documents) > 5
    assert "docs/operating.md" in relative_links((ROOT / "README.md").read_text())  # the scan sees links
    assert broken_links(ROOT, documents) == []


def test_link_check_flags_missing_and_outside_targets(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("x")
    readme = tmp_path / "README.md"
    readme.write_text(
        "[ok](docs/here.md#part) [web](https://example.com) [anchor](#top) `[code](nowhere.md)`\n"
        "[gone](docs/gone.md) ![img](../outside.png)\n\n```\n[fenced](fenced.md)\n```\n"
        "[ref]: docs/missing.md\n"
    )
    assert relative_links(readme.read_text()) == ["docs/here.md", "docs/gone.md", "../outside.png", "docs/missing.md"]
    assert broken_links(tmp_path, [readme]) == [
        "README.md: docs/gone.md (no such file)",
        "README.md: ../outside.png (outside the repository)",
        "README.md: docs/missing.md (no such file)",
    ]
