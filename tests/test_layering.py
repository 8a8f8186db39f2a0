"""Imports point down: the shared math never imports the silo or coordinator side, which never import the top.

Layers, lowest first (a module may import its own layer and the ones below, never above):
0. `errors`, `io`; 1. `data`, `models`, `metrics`; 2. the shared pieces both sides use: `privacy` (DP math
and the DP round), `training`, `evaluation`, `config`, `settings` (with `run_config_values`, how one value is
read, and `run_lines`, a run's coalition lines and regions), `messages`, `versions`, `model_io`,
`bounds`, `baselines`, `statistics` (models solved from summed statistics), `world`, `adoption_policy` (a
region's policy), `adaptation` (a global version adapted to one silo's data, in the silo), `exposure` (how
many of a silo's users a model shows an item); 3. `silo` (what a jurisdiction runs) and `coordinator` (what
the coordinator runs), which never import each other; 4. `flower` (the Flower adapters), `deploy`;
5. `experiment`, `report`, `plots`, `sweep_plots`, `run_exposure` (a finished run's exposure per region),
`regime_report` (each jurisdiction's policy and spend), `coalition_audit` (versions against partners),
`divestment` (a region removed from a trained line), `run_records` (what a simulated run's silos recorded);
6. `commands`, `conf`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "fedrec"
LAYERS = {
    "errors": 0, "io": 0,
    "data": 1, "models": 1, "metrics": 1,
    "privacy": 2, "training": 2, "evaluation": 2, "config": 2, "settings": 2, "messages": 2, "versions": 2,
    "model_io": 2, "bounds": 2, "world": 2, "baselines": 2, "statistics": 2, "adoption_policy": 2, "adaptation": 2,
    "exposure": 2, "run_config_values": 2, "run_lines": 2,
    "silo": 3, "coordinator": 3,
    "flower": 4, "deploy": 4,
    "experiment": 5, "report": 5, "plots": 5, "sweep_plots": 5, "privacy_audit": 5, "collect": 5, "privacy_utility": 5,
    "run_exposure": 5, "regime_report": 5, "coalition_audit": 5, "divestment": 5, "run_records": 5,
    "commands": 6, "conf": 6,
}
SIDES = ("silo", "coordinator")
"""Same layer, never each other: what the two sides share travels in messages (`fedrec.messages`)."""


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


def test_the_silo_and_the_coordinator_never_import_each_other() -> None:
    crossing = []
    for side in SIDES:
        other = next(o for o in SIDES if o != side)
        for path in sorted((ROOT / side).rglob("*.py")):
            crossing += [f"fedrec/{path.relative_to(ROOT)}:{line} imports {module}"
                         for line, module in imports_of(path) if top_of(module) == other]
    assert not crossing, "the silo and the coordinator must not import each other:\n" + "\n".join(crossing)
