"""The package's imports flow one way: no module reaches, directly or through others, back to itself.

Every import counts, those inside functions too: a lazy import is still a dependency, and a
circle through one is the same tangle for the next reader."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "claims_search"


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from a.b import c`` counts ``a.b.c`` when that
    is a module, else ``a.b``)."""
    mods = {}
    for f in root.rglob("*.py"):
        name = ".".join((root.name, *f.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        mods[name] = f
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        here = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                graph[m] |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: climb from this module's package
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    graph[m] |= {full} if full in mods else {base} if base in mods else set()
        graph[m].discard(m)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_check_finds_a_circle_through_a_lazy_import(tmp_path):
    pkg = tmp_path / "claims_search"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from claims_search.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from claims_search import a\n")
    (pkg / "c.py").write_text("from . import a\n")
    assert cycles(import_graph(pkg)) == [["claims_search.a", "claims_search.b"]]


# The stages, lowest first, in the order data flows. A module may import its own stage, any stage
# below it and the base modules at the package's top; never a stage above it.
STAGES = ("data", "model", "runs", "results", "tracking", "cluster", "search")
BASE = ("errors", "atomic", "named", "storage", "metrics")


def floor(module: str) -> int:
    """-1 for the base (and the package root), the stage's index, or len(STAGES) for the entry
    points at the top (cli, demo, commands)."""
    part = module.split(".")[1] if "." in module else ""
    if part in STAGES:
        return STAGES.index(part)
    return -1 if part in BASE or part == "" else len(STAGES)


def climbs(graph: dict[str, set[str]]) -> list[str]:
    """Every import that reaches up to a higher floor, as ``"a -> b"``."""
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if floor(d) > floor(m))


def test_imports_flow_down_the_stages():
    assert climbs(import_graph()) == []


def test_every_module_lives_on_a_floor_the_check_knows():
    top = {m.split(".")[1] for m in import_graph() if "." in m}
    assert top <= set(STAGES) | set(BASE) | {"cli", "demo", "commands"}


def test_the_check_finds_a_stage_reaching_up():
    graph = {"claims_search.model.loop": {"claims_search.search.space", "claims_search.data.cache",
                                          "claims_search.errors"},
             "claims_search.errors": {"claims_search.cli"}}
    assert climbs(graph) == ["claims_search.errors -> claims_search.cli",
                             "claims_search.model.loop -> claims_search.search.space"]
