"""Every server optimizer trains end to end, and a federation whose silos all fail says so.

- FedAvg, FedAvgM and FedAdam (Flower's own) each run two rounds in which every silo trains and evaluates, and
  the global model keeps the model's dtypes (Flower's FedAdam returns float64 arrays, which every silo refused
  as not its model's, so `strategy=fedadam` trained one round and evaluated nothing: found by the strategy study);
- when every silo fails, the run stops with an error naming the failure instead of writing NaN metrics.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakegrid import run_in_process
from flwr.app import Context, Message

from fedrec.config import experiment_from_dict
from fedrec.errors import FedrecError
from fedrec.experiment import run_experiment
from fedrec.model_io import load_global_model

DATASET = {"name": "synthetic", "n_users": 300, "n_items": 80, "region_only_items": 4, "region_sizes": [2.0, 1.0, 1.0],
           "mean_interactions": 12.0, "min_interactions": 5, "seed": 3}


def run(out: Path, strategy: dict[str, Any], mods: list[Any] | None = None) -> dict[str, Any]:
    cfg = experiment_from_dict({"dataset": DATASET, "model": {"name": "mf", "dim": 6}, "federation": {"rounds": 2},
                                "strategy": strategy, "bounds": [], "baselines": []})
    return run_experiment(cfg, out, log=lambda *_: None,
                          engine=functools.partial(run_in_process, client_mods=mods or []))


@pytest.mark.parametrize("strategy", [{"name": "fedavg"}, {"name": "fedavgm", "server_momentum": 0.9},
                                      {"name": "fedadam", "server_lr": 0.01}], ids=lambda s: s["name"])
def test_every_server_optimizer_trains_every_silo_every_round(tmp_path: Path, strategy: dict[str, Any]) -> None:
    res = run(tmp_path, strategy)
    regions = sorted(res["dataset"]["regions"])
    assert [sorted(e["participants"]) for e in res["round_log"]] == [regions, regions]
    assert all(e["failures"] == [] for e in res["round_log"]), [e["failures"] for e in res["round_log"]]
    assert sorted(res["final"]["federated"]["per_region"]) == regions
    assert np.isfinite(res["final"]["federated"]["overall"]["ndcg@20"])
    arrays, _, _ = load_global_model(tmp_path / "global_model.safetensors")
    assert {k: v.dtype for k, v in arrays.items()} == {k: np.dtype(np.float32) for k in arrays}


def _failing(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    if msg.metadata.message_type == "train":
        raise RuntimeError("this silo's training is broken")
    return call_next(msg, context)


def test_a_federation_whose_silos_all_fail_stops_with_the_failure(tmp_path: Path) -> None:
    with pytest.raises(FedrecError, match=re.escape("this silo's training is broken")):
        run(tmp_path, {"name": "fedavg"}, mods=[_failing])
