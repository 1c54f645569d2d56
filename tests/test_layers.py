"""Dependencies point one way: config/loss/objective/... -> data/model -> train/eval -> tune/study -> cli.

Every ``hbt`` import, top-level or inside a function, is read from the source
with ``ast``; an import of a higher layer, or a cycle between packages of one
layer, fails naming the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

from hbt.config import PROJECT_ROOT

LAYERS = {
    "config": 0, "loss": 0, "tracking": 0, "hardware": 0, "distributed": 0, "raysetup": 0, "objective": 0, "progress": 0,
    "data": 1, "model": 1,
    "train": 2, "eval": 2,
    "tune": 3, "study": 3,
    "cli": 4, "__main__": 4, "__init__": 4,
}


def _unit(module: str) -> str:
    """``hbt.eval.runner`` -> ``eval``; ``hbt.config`` -> ``config``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = module.split(".")[: -node.level] if not path.name == "__init__.py" else module.split(".")[: len(module.split(".")) - node.level + 1]
                names = [".".join([*base, node.module] if node.module else base)]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            if name == "hbt" or name.startswith("hbt."):
                yield node.lineno, name


def _modules():
    root = PROJECT_ROOT / "hbt"
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(PROJECT_ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts)


def test_every_unit_has_a_layer():
    units = {_unit(m) for _, m in _modules()}
    assert not units - set(LAYERS), f"add these to LAYERS: {sorted(units - set(LAYERS))}"


def test_no_import_points_up():
    bad = []
    for path, module in _modules():
        src = _unit(module)
        if module == "hbt":
            continue
        for line, name in _imports(path, module):
            dst = _unit(name)
            if dst in LAYERS and LAYERS[dst] > LAYERS[src]:
                bad.append(f"{path.relative_to(PROJECT_ROOT)}:{line}: {src} (layer {LAYERS[src]}) imports {name} "
                           f"(layer {LAYERS[dst]})")
    assert not bad, "\n".join(bad)


def test_no_cycles_between_packages():
    edges: dict[str, set[str]] = {}
    for path, module in _modules():
        for _, name in _imports(path, module):
            if _unit(name) != _unit(module) and module != "hbt":
                edges.setdefault(_unit(module), set()).add(_unit(name))

    def reach(a: str, seen: set[str]) -> set[str]:
        for b in edges.get(a, ()):
            if b not in seen:
                seen.add(b)
                reach(b, seen)
        return seen

    cycles = sorted(a for a in edges if a in reach(a, set()))
    assert not cycles, f"packages on an import cycle: {cycles}"
