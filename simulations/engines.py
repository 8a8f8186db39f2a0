"""The federation engine a study runs on: Flower's simulation engine (Ray), or the tests' in-process grid.

`--engine simulation` runs the real ServerApp and ClientApps on Flower's simulation engine; any other name runs the
same apps on the in-process grid of `tests/fakegrid.py` (no Ray; for quick runs). Client mods, when a study gives
them, run in each ClientApp (on Flower's engine inside SecAgg+'s client side, where a mod sees the plain update).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedrec.flower.egress_recorder import Mod


def engine_for(name: str, mods: list[Mod] | None = None) -> Any:
    """Flower's simulation engine, or the tests' in-process grid (same apps, no Ray), with these client mods."""
    if name == "simulation":
        from fedrec.flower.simulation import run_simulation
        return run_simulation if mods is None else functools.partial(run_simulation, inner_mods=mods)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fakegrid import run_in_process  # the tests' in-process grid: real apps, no Ray
    return run_in_process if mods is None else functools.partial(run_in_process, client_mods=mods)
