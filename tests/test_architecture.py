"""The layering rules of the code base, checked statically on every module's imports.

Each ``.py`` file under ``dimbench/`` and ``models/`` is parsed with :mod:`ast` (nothing is imported, so a
lazy import inside a function counts as much as one at the top of the file) and its imports of the two packages
become edges of a module graph. The rules:

- no import cycle: every strongly connected component of the graph is a single module that does not import
  itself. A package's ``__init__`` importing its own submodules is an ordinary edge, so ``from pkg import x``
  inside a submodule of ``pkg`` closes a cycle when ``x`` is a name the ``__init__`` gathers, not a submodule;
- ``models`` knows nothing of ``dimbench`` (the models are usable without the harness);
- only the command-line front ends import ``dimbench.console`` (rich output, progress, the summary table);
  library modules raise the errors of the leaf ``dimbench.errors`` and the front ends print them;
- the generic model modules (registry, checkpoints) import no family module: a family registers itself and
  declares its facts, the generic code reads the declarations.

The checker is plain functions over a ``{module: [imports]}`` mapping, so the tests at the bottom feed it small
synthetic graphs and source trees to show that it reports each kind of violation.
"""

from __future__ import annotations

import ast
import io
import re
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dimbench", "models")

#: The command-line front ends: the only modules that may import dimbench.console. Each parses arguments,
#: runs library code and turns a UserError into one line on stderr and exit status 2.
FRONT_ENDS = frozenset({
    "dimbench.cli",
    "dimbench.cluster.cli",
    "dimbench.__main__",
    "dimbench.checkpoint_cli",
    "dimbench.fid_cli",
    "dimbench.profile_cli",
    "dimbench.gates.cli",
    "dimbench.training.cli",
})

#: Modules of ``models`` that serve every family and so must not import any one family's module.
GENERIC_MODEL_MODULES = frozenset({"models.registry", "models.checkpoints"})


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the checked packages."""

    source: str  # the importing module, dotted
    target: str  # the imported module (a submodule when ``from pkg import sub`` names one, else the package)
    line: int
    in_function: bool  # inside a def (a lazy import) rather than run when the module loads
    implied: bool = False  # a package on the way to the named module (its __init__ runs first)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} for every module of ``packages`` under ``root``."""
    return {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".")
    base = base[: len(base) - level + (1 if is_package else 0)]
    return ".".join(base + ([name] if name else []))


def parse_imports(module: str, source: str, known: set[str], is_package: bool = False) -> list[Import]:
    """The imports of ``source`` (module ``module``) whose target is one of the ``known`` modules or below one.

    ``from a.b import c`` targets ``a.b.c`` when that is a known module, else ``a.b`` (c is a name defined there);
    either way the packages on the way (``a``, ``a.b``) are imported too, unless they contain ``module``.
    Imports under ``if TYPE_CHECKING:`` count too: a cycle of annotations is still a cycle of knowledge.
    """
    found: list[Import] = []

    def closest_known(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    def add(target: str, node: ast.stmt, in_function: bool) -> None:
        # Importing a.b.c first runs a/__init__ and a/b/__init__: those packages are imported too, unless they
        # hold the importing module (then they are already loading).
        parts = target.split(".")
        for n in range(1, len(parts)):
            name = ".".join(parts[:n])
            if name in known and not (module == name or module.startswith(name + ".")):
                found.append(Import(module, name, node.lineno, in_function, implied=True))
        found.append(Import(module, target, node.lineno, in_function))

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    target = closest_known(alias.name)
                    if target:
                        add(target, child, in_function)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(module, is_package, child.level, child.module)
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    target = full if full in known else closest_known(base)
                    if target:
                        add(target, child, in_function)
            visit(child, inner)

    visit(ast.parse(source), False)
    return found


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, list[Import]]:
    """{module: its imports of ``packages``} for the tree under ``root``."""
    files = source_files(root, packages)
    known = set(files)
    return {name: parse_imports(name, path.read_text(), known, path.name == "__init__.py")
            for name, path in files.items()}


def cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module, or a module importing itself
    (Tarjan's algorithm, iterative so a deep graph cannot overflow the stack). Each sorted, biggest first."""
    edges = {m: sorted({i.target for i in imps if i.target in graph}) for m, imps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(edges[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in edges[node]:
                        found.append(sorted(component))
    return sorted(found, key=lambda c: (-len(c), c))


def forbidden_imports(graph: dict[str, list[Import]], front_ends=FRONT_ENDS,
                      generic_models=GENERIC_MODEL_MODULES, families=frozenset()) -> list[str]:
    """Every import that breaks a layering rule, as 'source:line imports target (why)'."""
    problems = []
    for imp in (i for imps in graph.values() for i in imps if not i.implied):
        where = f"{imp.source}:{imp.line} imports {imp.target}"
        if imp.source.split(".")[0] == "models" and imp.target.split(".")[0] == "dimbench":
            problems.append(f"{where} (models must not depend on the dimbench harness)")
        if imp.target == "dimbench.console" and imp.source not in front_ends:
            problems.append(f"{where} (only the command-line front ends may use the console; raise an error "
                            f"from dimbench.errors instead)")
        if imp.source in generic_models and imp.target in families:
            problems.append(f"{where} (generic model code must read family declarations, not import a family)")
    return problems


def family_modules(root: Path = ROOT) -> frozenset[str]:
    """The modules of ``models`` that register a family (they call register_family at module level)."""
    found = set()
    for name, path in source_files(root, ("models",)).items():
        for statement in ast.parse(path.read_text()).body:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "register_family"
                   for n in ast.walk(statement)):
                found.add(name)
    return frozenset(found)


def lazy_imports(root: Path = ROOT, packages=PACKAGES) -> list[LazyImport]:
    """Every import statement inside a function in ``packages`` (any target, not only the checked packages)."""
    found = []
    for name, path in source_files(root, packages).items():
        text = path.read_text()
        comments = _comments(text)
        lines_of = [""] + text.splitlines()

        def visit(node, inside, name=name, comments=comments, lines_of=lines_of):
            for body in (getattr(node, f, None) for f in ("body", "orelse", "finalbody", "handlers")):
                if not isinstance(body, list):
                    continue
                block: list[ast.stmt] = []  # consecutive import statements
                for statement in [*body, None]:
                    if isinstance(statement, (ast.Import, ast.ImportFrom)):
                        block.append(statement)
                        continue
                    if block and inside:
                        # the block's own lines, the line above it, and up through the headers that hold it
                        # (try:, with ...:) to a comment line
                        top = block[0].lineno - 1
                        while (top > 1 and top not in comments and lines_of[top].rstrip().endswith(":")
                               and not lines_of[top].lstrip().startswith(("def ", "async def "))):
                            top -= 1
                        lines = range(top, block[-1].end_lineno + 1)
                        why = " ".join(comments[n] for n in lines if n in comments)
                        found.extend(LazyImport(name, s.lineno, ast.unparse(s), why) for s in block)
                    block = []
            for child in ast.iter_child_nodes(node):
                visit(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

        visit(ast.parse(text), False)
    return sorted(found)


@dataclass(frozen=True, order=True)
class LazyImport:
    module: str
    line: int
    statement: str
    why: str  # the comments on the lines of its block of imports and on the line above the block


def _comments(text: str) -> dict[int, str]:
    """{line: comment text} of a module's comments, lint directives (noqa) left out."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            comment = re.sub(r"#\s*noqa\b[:\s\w,]*", "", tok.string).strip("# ")
            if comment:
                out[tok.start[0]] = comment
    return out


# ------------------------------------------------------------------------------------------ the rules, here


@pytest.fixture(scope="module")
def tree() -> dict[str, list[Import]]:
    return import_graph()


def test_no_import_cycles_in_dimbench_and_models(tree):
    found = cycles(tree)
    assert not found, "import cycles (each line one strongly connected component):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_no_forbidden_imports(tree):
    problems = forbidden_imports(tree, families=family_modules())
    assert not problems, "\n".join(problems)


def test_the_rules_see_the_real_tree(tree):
    """The checks above would pass vacuously on an empty or misparsed tree: they do not."""
    graph = tree
    assert {"dimbench.cli", "dimbench.console", "dimbench.errors", "models.dim", "models.registry"} <= set(graph)
    assert any(i.target == "dimbench.console" for i in graph["dimbench.cli"])
    assert any(i.target == "models.registry" for i in graph["models.dim"])
    assert {"models.dim", "models.dit", "models.uvit"} <= family_modules()
    assert set(FRONT_ENDS) <= set(graph), "a front end named in FRONT_ENDS no longer exists"
    assert not graph["dimbench.errors"], "dimbench.errors is the leaf every layer may import: it imports nothing"


def test_every_lazy_import_says_why():
    """An import inside a function hides an edge of the graph from a reader; the ones left are deliberate (an
    optional or slow dependency, a module that must stay light) and a comment beside them, or on the line above
    their block, says why."""
    unexplained = [f"{i.module}:{i.line}: {i.statement}" for i in lazy_imports() if not i.why]
    assert not unexplained, "imports inside functions without a comment saying why:\n" + "\n".join(unexplained)


# ------------------------------------------------------------------------------- the checker can fail


def _synthetic(tmp_path: Path, files: dict[str, str]) -> dict[str, list[Import]]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return import_graph(tmp_path)


def test_checker_reports_a_cycle_through_a_lazy_import_and_a_package_init(tmp_path):
    graph = _synthetic(tmp_path, {
        "dimbench/__init__.py": "",
        "dimbench/console.py": "def columns():\n    from dimbench.metrics import rows\n    return rows()\n",
        "dimbench/metrics/__init__.py": "from .fid import rows\n",
        "dimbench/metrics/fid.py": "from ..console import UserError\ndef rows(): ...\n",
        "dimbench/leaf.py": "import os\n",
        "models/__init__.py": "",
        "models/a.py": "from . import b\n",
        "models/b.py": "import models.a as a\n",
        "models/c.py": "from models import c\n",
    })
    assert graph["dimbench.metrics.fid"][0].target == "dimbench.console"  # relative import resolved
    assert graph["dimbench.console"][0].in_function
    assert cycles(graph) == [["dimbench.console", "dimbench.metrics", "dimbench.metrics.fid"],
                             ["models.a", "models.b"], ["models.c"]]
    assert cycles({"x": [], "y": [Import("y", "x", 1, False)]}) == []


def test_checker_reports_each_forbidden_edge(tmp_path):
    graph = _synthetic(tmp_path, {
        "dimbench/__init__.py": "",
        "dimbench/console.py": "",
        "dimbench/cli.py": "from dimbench.console import console\n",  # a front end: allowed
        "dimbench/suite.py": "from dimbench.console import UserError\n",
        "dimbench/report/__init__.py": "",
        "dimbench/report/html.py": "def f():\n    import dimbench.console\n",
        "models/__init__.py": "",
        "models/registry.py": "",
        "models/dim.py": "from .registry import register_family\nFAMILY = register_family('dim')\n",
        "models/checkpoints.py": "def choose():\n    from .dim import choose_pad_layout\n",
        "models/layers.py": "from dimbench.errors import UserError\n",
        "dimbench/errors.py": "",
    })
    problems = forbidden_imports(graph, front_ends={"dimbench.cli"}, families=family_modules(tmp_path))
    assert family_modules(tmp_path) == {"models.dim"}
    assert len(problems) == 4, problems
    assert problems[0].startswith("dimbench.report.html:2 imports dimbench.console (only the command-line")
    assert problems[1].startswith("dimbench.suite:1 imports dimbench.console")
    assert problems[2].startswith("models.checkpoints:2 imports models.dim (generic model code")
    assert problems[3].startswith("models.layers:1 imports dimbench.errors (models must not depend")


def test_checker_finds_lazy_imports_and_their_comments(tmp_path):
    _synthetic(tmp_path, {
        "dimbench/__init__.py": "import json\n",
        "dimbench/a.py": """\
            import os  # module level: not lazy
            def f():
                # slow to import
                import torch
                import numpy

                def g():
                    import math  # noqa: F401
                try:  # optional
                    import triton
                except ImportError:
                    import re  # fallback
                x = 1
                import sys
            # a comment above a def explains none of its imports
            def h():
                import json
                # why
                try:
                    with quiet():
                        import fvcore
                except ImportError:
                    pass
            """,
        "models/__init__.py": "",
    })
    assert [(i.line, i.statement, i.why) for i in lazy_imports(tmp_path)] == [
        (4, "import torch", "slow to import"), (5, "import numpy", "slow to import"), (8, "import math", ""),
        (10, "import triton", "optional"), (12, "import re", "fallback"), (14, "import sys", ""),
        (17, "import json", ""), (21, "import fvcore", "why")]
