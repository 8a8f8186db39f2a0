"""Imports point down: the shared math never imports the silo or coordinator side, which never import the top.

Layers, lowest first (a module may import its own layer and the ones below, never above):
0. `errors`, `io`; 1. `data`, `models`, `metrics`; 2. `privacy` (DP math and the DP round), `training`,
`evaluation`, `config`, `bounds`, `baselines`, `world`, `model_io`, `model_registry`, `adoption`;
3. `federation` (silo and coordinator sides, the Flower apps); 4. `deploy`, `experiment`, `report`, `plots`; 5. `cli`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "fedrec"
LAYERS = {
    "errors": 0, "io": 0,
    "data": 1, "models": 1, "metrics": 1,
    "privacy": 2, "training": 2, "evaluation": 2, "config": 2, "bounds": 2, "world": 2, "model_io": 2,
    "model_registry": 2, "adoption": 2, "baselines": 2,
    "federation": 3,
    "deploy": 4, "experiment": 4, "report": 4, "plots": 4,
    "cli": 5, "conf": 5,
}


def top_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "fedrec" and len(parts) > 1 else None


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


def test_every_package_has_a_layer() -> None:
    tops = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in ROOT.iterdir()
            if p.name != "__init__.py" and (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert tops <= set(LAYERS), f"give {sorted(tops - set(LAYERS))} a layer in this test"


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        here = rel.parts[0].removesuffix(".py")
        if here == "__init__":
            continue
        for line, module in imports_of(path):
            there = top_of(module)
            if there is not None and there in LAYERS and LAYERS[there] > LAYERS[here]:
                upward.append(f"fedrec/{rel}:{line} imports {module} (layer {LAYERS[there]} > {LAYERS[here]})")
    assert not upward, "imports that point up:\n" + "\n".join(upward)
