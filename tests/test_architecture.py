"""The shape of routes/: no import cycle, and the domain never reaches up into its front ends.

The imports are read from the source with ast (relative imports resolved, imports inside functions
included), not from sys.modules, so a lazy import that only runs on some path counts too.

- No cycle among routes/ modules. Imports under ``if TYPE_CHECKING:`` never run, so they are
  left out of the cycle check (that is what they are for); the layer rules below still see them.
- routes/verification/ and routes/nginx/ are the domain: they never import the task layer
  (routes.tasks), the admin or the commands, not even through another module, and they build no
  HTML and render no template: the admin does that.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "routes"
# The domain packages and the modules each must hold in the target layout (issue 10).
DOMAIN = {
    "routes.verification": ("checks", "http", "diagnoses", "runner", "runs"),
    "routes.nginx": ("render", "boundaries", "simulate", "export"),
}
# Front ends over the domain: the task layer, the admin and the management commands.
UPWARD = ("routes.tasks", "routes.admin", "routes.management")
# What renders templates or builds HTML.
HTML = ("django.template", "django.shortcuts", "django.utils.html", "django.utils.safestring")
HTML_NAMES = frozenset(
    {"render", "render_to_string", "format_html", "format_html_join", "mark_safe", "SafeString"}
)


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it is, and whether it only runs for type checkers."""

    module: str  # the importing module
    target: str  # the imported module (or, for `from x import name`, x.name when that is one)
    names: tuple[str, ...]  # the names taken by `from x import ...` (empty for `import x`)
    line: int
    typing_only: bool


def modules(root: Path, package: str) -> dict[str, Path]:
    """Return every module of the package under root by dotted name (packages by their own)."""
    found = {}
    for path in sorted((root / package.replace(".", "/")).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(
    node: ast.AST, *, typing_only: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Yield every import statement under node, in functions and classes too."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, typing_only
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                yield from _statements(ast.Module([statement], []), typing_only=True)
            for statement in child.orelse:
                yield from _statements(ast.Module([statement], []), typing_only=typing_only)
        else:
            yield from _statements(child, typing_only=typing_only)


def _base(module: str, path: Path, statement: ast.ImportFrom) -> str:
    """Return the absolute module a `from ... import` reads from (relative ones resolved)."""
    if not statement.level:
        return statement.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    parts = package.split(".")
    if statement.level - 1 >= len(parts):
        raise ValueError(f"{path}:{statement.lineno}: relative import beyond the top package")
    parts = parts[: len(parts) - (statement.level - 1)]
    return ".".join(parts + ([statement.module] if statement.module else []))


def imports_of(module: str, path: Path, known: Iterable[str]) -> list[Import]:
    """Return the imports of one module, each resolved to the module it loads."""
    known = set(known)
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for statement, typing_only in _statements(tree):
        if isinstance(statement, ast.Import):
            for alias in statement.names:
                found.append(Import(module, alias.name, (), statement.lineno, typing_only))
            continue
        base = _base(module, path, statement)
        names = tuple(alias.name for alias in statement.names)
        submodules = [f"{base}.{name}" for name in names if f"{base}.{name}" in known]
        # `from pkg import sub` loads pkg.sub; `from pkg import name` loads pkg itself.
        targets = submodules + ([base] if len(submodules) < len(names) else [])
        found += [Import(module, t, names, statement.lineno, typing_only) for t in targets]
    return found


Graph = dict[str, list[Import]]


def import_graph(root: Path, package: str) -> Graph:
    """Return each module of the package with its imports (of any module, inside or not)."""
    found = modules(root, package)
    return {name: imports_of(name, path, found) for name, path in found.items()}


def _inside(target: str, prefixes: Iterable[str]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def find_cycles(graph: Graph) -> list[list[str]]:
    """Return one import cycle (a path that ends where it starts) per tangle of modules.

    Tarjan's strongly connected components: every component of more than one module, or of a
    module that imports itself, holds a cycle; the one returned is a shortest one through the
    component's first module.
    """
    edges = {
        name: sorted({i.target for i in imports if i.target in graph and not i.typing_only})
        for name, imports in graph.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        # Recursive: routes/ has a few dozen modules, far below the recursion limit.
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return [_shortest_cycle(edges, component) for component in sorted(components)]


def _shortest_cycle(edges: dict[str, list[str]], component: list[str]) -> list[str]:
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in edges[node]:
            if nxt == start:
                return paths[node] + [start]
            if nxt in members and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start} in {component}")  # Tarjan guarantees one


def describe(cycle: list[str], graph: Graph) -> str:
    """Return the cycle as `a (line 3) -> b (line 9) -> a`, naming each import's line."""
    steps = []
    for here, nxt in zip(cycle, cycle[1:], strict=False):
        line = next(i.line for i in graph[here] if i.target == nxt and not i.typing_only)
        steps.append(f"{here} (line {line})")
    return " -> ".join(steps + [cycle[-1]])


def upward_paths(graph: Graph, sources: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    """Return, per source module, a chain of imports that reaches a forbidden package."""
    forbidden = tuple(forbidden)
    problems = []
    for source in sorted(sources):
        paths = {source: [source]}
        queue = [source]
        while queue:
            node = queue.pop(0)
            hit = next((i for i in graph[node] if _inside(i.target, forbidden)), None)
            if hit is not None:
                chain = " -> ".join(paths[node] + [hit.target])
                problems.append(f"{source} reaches {hit.target}: {chain} (line {hit.line})")
                break
            for i in graph[node]:
                if i.target in graph and i.target not in paths:
                    paths[i.target] = paths[node] + [i.target]
                    queue.append(i.target)
    return problems


def html_imports(graph: Graph, sources: Iterable[str]) -> list[str]:
    """Return each import of a source module that renders a template or builds HTML."""
    problems = []
    for source in sorted(sources):
        for i in graph[source]:
            if _inside(i.target, (PACKAGE,)):
                continue
            taken = sorted(HTML_NAMES.intersection(i.names))
            # `from django.utils import html`: outside routes/ a taken name may be a module.
            loaded = [
                m for m in [i.target, *(f"{i.target}.{n}" for n in i.names)] if _inside(m, HTML)
            ]
            if taken:
                problems.append(
                    f"{source} line {i.line} imports {', '.join(taken)} from {i.target}"
                )
            elif loaded:
                problems.append(f"{source} line {i.line} imports {loaded[-1]}")
    return problems


def _domain_modules(graph: Graph) -> list[str]:
    return [m for m in graph if _inside(m, DOMAIN)]


# --- routes/ itself -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(ROOT, PACKAGE)


def test_there_is_no_import_cycle_among_routes_modules(graph: Graph) -> None:
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in routes/ (break each one):\n" + "\n".join(
        describe(cycle, graph) for cycle in cycles
    )


@pytest.mark.parametrize("package", sorted(DOMAIN))
def test_the_domain_packages_hold_their_modules(graph: Graph, package: str) -> None:
    missing = [name for name in DOMAIN[package] if f"{package}.{name}" not in graph]
    assert not missing, f"{package} lacks {missing}: the layer rules would check nothing there"


def test_the_domain_never_imports_the_task_layer_the_admin_or_the_commands(graph: Graph) -> None:
    problems = upward_paths(graph, _domain_modules(graph), UPWARD)
    assert not problems, "the domain imports a front end:\n" + "\n".join(problems)


def test_the_domain_renders_no_template_and_builds_no_html(graph: Graph) -> None:
    problems = html_imports(graph, _domain_modules(graph))
    assert not problems, "the admin builds HTML, not the domain:\n" + "\n".join(problems)


def test_the_walk_reads_the_real_tree(graph: Graph) -> None:
    # A sample of routes/ itself, so that a walker that silently finds nothing fails here.
    assert {"routes.models", "routes.validators", "routes.nginx.render"} <= set(graph)
    render = {i.target: i.typing_only for i in graph["routes.nginx.render"]}
    assert render["routes.validators"] is False and render["routes.models"] is True
    # The sandbox imports socket inside the function that waits for nginx to listen.
    assert "socket" in {i.target for i in graph["routes.nginx.sandbox"]}


# --- the checks themselves, on planted packages -----------------------------------------------


def _plant(root: Path, files: dict[str, str]) -> Graph:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return import_graph(root, "pkg")


def test_it_finds_a_planted_cycle_through_a_relative_and_a_lazy_import(tmp_path: Path) -> None:
    graph = _plant(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from . import b\n",
            "pkg/b.py": "def later():\n    from pkg.c import thing\n",
            "pkg/c.py": "import pkg.a\n\nthing = 1\n",
            "pkg/d.py": "from pkg import a\n",  # reaches the cycle, is not part of it
        },
    )
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert (
        describe(cycles[0], graph) == "pkg.a (line 1) -> pkg.b (line 2) -> pkg.c (line 1) -> pkg.a"
    )


def test_it_finds_a_module_that_imports_itself_and_a_cycle_in_a_subpackage(tmp_path: Path) -> None:
    graph = _plant(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/selfish.py": "from pkg import selfish\n",
            "pkg/sub/__init__.py": "from .x import y\n",
            "pkg/sub/x.py": "from .. import sub\n\ny = 1\n",
        },
    )
    assert find_cycles(graph) == [
        ["pkg.selfish", "pkg.selfish"],
        ["pkg.sub", "pkg.sub.x", "pkg.sub"],
    ]


def test_type_checking_imports_make_no_cycle_but_still_count_for_the_layers(tmp_path: Path) -> None:
    graph = _plant(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/tasks.py": "from pkg.verification import runs\n",
            "pkg/verification/__init__.py": "",
            "pkg/verification/runs.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from pkg.tasks import enqueue\n"
            ),
        },
    )
    assert find_cycles(graph) == []
    problems = upward_paths(graph, ["pkg.verification.runs"], ["pkg.tasks"])
    assert problems == [
        "pkg.verification.runs reaches pkg.tasks: pkg.verification.runs -> pkg.tasks (line 3)"
    ]


def test_it_follows_an_upward_import_through_another_module(tmp_path: Path) -> None:
    graph = _plant(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/admin/__init__.py": "",
            "pkg/admin/pages.py": "",
            "pkg/helpers.py": "def f():\n    from pkg.admin.pages import page\n",
            "pkg/verification/__init__.py": "",
            "pkg/verification/checks.py": "from ..helpers import f\n",
        },
    )
    problems = upward_paths(graph, ["pkg.verification.checks"], ["pkg.admin"])
    assert problems == [
        "pkg.verification.checks reaches pkg.admin.pages: "
        "pkg.verification.checks -> pkg.helpers -> pkg.admin.pages (line 2)"
    ]


def test_it_finds_html_and_template_imports_even_inside_functions(tmp_path: Path) -> None:
    graph = _plant(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/verification/__init__.py": "",
            "pkg/verification/runs.py": (
                "from django.utils import html\n"
                "def page():\n"
                "    from django.template.loader import render_to_string\n"
                "    from django.utils.safestring import mark_safe\n"
            ),
            "pkg/verification/clean.py": "from django.utils.translation import gettext\n",
        },
    )
    sources = ["pkg.verification.clean", "pkg.verification.runs"]
    assert html_imports(graph, sources) == [
        "pkg.verification.runs line 1 imports django.utils.html",
        "pkg.verification.runs line 3 imports render_to_string from django.template.loader",
        "pkg.verification.runs line 4 imports mark_safe from django.utils.safestring",
    ]
