"""The region-side guard on Flower's real simulation engine (Ray), under SecAgg+: the coordinator sees only the sum.

One run of `test_defences.py`'s world with `federation.secure_aggregation=secaggplus` and the default guard; `na`'s
node boosts one obscure item at 2x its honest update norm (at 5x a parameter leaves SecAgg+'s clipping range and the
node's own SecAgg+ client refuses to mask it) *inside* SecAgg+'s client side (`inner_mods`: its own code rewrites
its plain update before it is masked). The masked sum carries the boost into the global model (the item reaches most
honest users' top 20 there), while what every honest region serves, guarded, shows it to at most 1%.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from fedrec.config import experiment_from_dict
from fedrec.experiment import run_experiment
from fedrec.flower.hostile_mods import targeted_boost
from fedrec.flower.simulation import run_simulation
from fedrec.run_exposure import exposure_from_run

pytestmark = pytest.mark.slow

DATASET = {"name": "synthetic", "n_users": 600, "n_items": 120, "region_only_items": 6,
           "region_sizes": [2.0, 1.0, 1.0], "seed": 5}
TARGET = 56  # rank 122 of 138 by item bias in the in-process clean run of this world


def test_under_secagg_the_guard_alone_keeps_a_boost_out_of_every_honest_feed(tmp_path: Path) -> None:
    cfg = experiment_from_dict({"dataset": DATASET, "model": {"name": "mf", "dim": 8},
                                "federation": {"rounds": 4, "secure_aggregation": "secaggplus"},
                                "train": {"n_negatives": 32}, "bounds": [], "baselines": []})
    res = run_experiment(cfg, tmp_path, log=lambda *_: None,
                         engine=functools.partial(run_simulation, inner_mods=[targeted_boost("na", TARGET, 2.0)]))

    assert all(not e["rejected"] and "na" in e["participants"] for e in res["round_log"])  # masked: nothing to screen
    assert all(not e["robust"] for e in res["round_log"])  # the coordinator saw no single update to attribute
    global_model = exposure_from_run(tmp_path, TARGET)
    served = exposure_from_run(tmp_path, TARGET, served=True)
    honest = ("eu", "apac")
    assert min(global_model[r].exposure.fraction for r in honest) >= 0.3, {r: global_model[r].exposure for r in honest}
    assert max(served[r].exposure.fraction for r in honest) <= 0.01, {r: served[r].exposure for r in honest}
