"""The layering of docs/architecture.md, checked from the imports themselves (module-level and
function-level ``from pdebm... import`` / ``import pdebm...`` statements, read with ``ast``).

Five layers, from the top: commands, the run (training machinery), science (samplers, metrics,
loss, grid), models (energies, data, schedules), ground (config, errors, io, schema). A module
imports only its own layer or layers below it, and the module graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS = {  # top to bottom; a module's layer is that of the first pattern its name matches
    "commands": ["pdebm.cli", "pdebm.preflight", "pdebm.train", "pdebm.eval", "pdebm.sample",
                 "pdebm.command", "scripts."],
    "run": ["pdebm.rundir", "pdebm.build", "pdebm.step", "pdebm.runlog", "pdebm.monitor", "pdebm.stop",
            "pdebm.checkpoint", "pdebm.resume", "pdebm.checkpoint_diff", "pdebm.diverge",
            "pdebm.progress", "pdebm.validate", "pdebm.hostsync"],
    "science": ["pdebm.samplers", "pdebm.metrics", "pdebm.loss", "pdebm.grid", "pdebm.figures",
                "pdebm.prescribed"],
    "models": ["pdebm.energy", "pdebm.data", "pdebm.schedules"],
    "ground": ["pdebm.config", "pdebm.errors", "pdebm.io", "pdebm.schema", "pdebm"],
}
ORDER = list(LAYERS)



def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    files = [*(ROOT / "pdebm").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")]
    return {_module_name(p): p for p in files}


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module ``name`` names, or its closest enclosing package among ours."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    """The pdebm modules ``module`` imports, anywhere in its file."""
    tree = ast.parse(MODULES[module].read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pdebm import checkpoint`: a submodule if one has that name
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            if n.startswith("pdebm"):
                target = _resolve(n)
                if target and target != module:
                    out.add(target)
    return out


GRAPH = {m: imports(m) for m in MODULES}


def layer(module: str) -> str:
    for name in ORDER:
        for pattern in LAYERS[name]:
            if module == pattern or (pattern != "pdebm" and module.startswith(pattern + ".")) or (
                    pattern.endswith(".") and module.startswith(pattern)):
                return name
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def test_every_module_has_a_layer_and_the_graph_is_read():
    assert {layer(m) for m in MODULES} == set(ORDER)
    assert "pdebm.samplers.base" in GRAPH["pdebm.samplers.sgld"]
    assert "pdebm.checkpoint" in GRAPH["pdebm.build"]  # `from pdebm import checkpoint, validate`
    assert sum(map(len, GRAPH.values())) > 80


def _arrows_up(below: str, above: str) -> list[str]:
    return sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if layer(m) == below
                  for t in ts if layer(t) == above)


NEVER = [(b, a) for i, a in enumerate(ORDER) for b in ORDER[i + 1:]]  # (lower layer, upper layer)


@pytest.mark.parametrize("below, above", NEVER)
def test_no_layer_imports_a_layer_above_it(below, above):
    """Samplers and metrics never import the run or the commands; models never import
    samplers; the ground imports nothing of ours above it."""
    assert _arrows_up(below, above) == []


def _cycles() -> list[list[str]]:
    """The import graph's strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
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
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    global GRAPH
    saved = GRAPH
    try:
        GRAPH = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        assert _cycles() == [["a", "b", "c"]]
    finally:
        GRAPH = saved


def test_no_import_cycles():
    assert _cycles() == []


def test_architecture_doc_names_every_module():
    """Each module of pdebm/ has its row: its path, its file name, or its package's folder."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [str(p.relative_to(ROOT)) for m, p in MODULES.items()
               if m.startswith("pdebm.") and p.name != "__init__.py"
               and not any(w in doc for w in (p.relative_to(ROOT).as_posix(), f"{p.stem}.py",
                                              f"{p.stem},", f"{p.stem}}}",
                                              f"{p.parent.relative_to(ROOT).as_posix()}/`"))]
    assert missing == []
