"""Federated EASE on the in-process grid (the real ServerApp and ClientApps, no Ray) is pooled EASE.

Three silos each send XᵀX of their training matrix once; the coordinator sums and solves. The global B
must equal EASE fit on the pooled training matrix (`fedrec.baselines`) to 1e-6, and every region's test
metrics must equal the pooled EASE baseline's. A hostile silo's statistics are screened out, and a region
can still fork (its own line: EASE on its own data).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fakegrid import run_in_process
from flwr.app import Array, ArrayRecord, Context, Message

from fedrec.baselines import fit_ease, pooled_matrix, run_baselines
from fedrec.baselines.ease import ease_weights, gram
from fedrec.config import experiment_from_dict
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.evaluation import pool
from fedrec.experiment import run_experiment
from fedrec.model_io import load_global_model
from fedrec.settings import RunSettings
from fedrec.versions import ModelRegistry
from fedrec.world import prepare_world

LAM = 100.0
DATASET = {"name": "synthetic", "n_users": 500, "n_items": 150, "region_only_items": 8,
           "region_sizes": [2.0, 1.0, 1.0], "seed": 3}


def experiment(out: Path, rounds: int = 1, adoption: dict | None = None) -> dict[str, Any]:
    cfg = experiment_from_dict({"dataset": DATASET, "model": {"name": "ease", "kwargs": {"lam": LAM}},
                                "federation": {"rounds": rounds}, "baselines": [], "adoption": adoption or {}})
    return run_experiment(cfg, out, log=lambda *_: None, engine=run_in_process)


@pytest.fixture(scope="module")
def federated(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("ease")
    return experiment(out), out


@pytest.fixture(scope="module")
def silos(federated: tuple[dict[str, Any], Path]) -> dict:  # type: ignore[type-arg]
    from fedrec.data.split import SiloData

    out = federated[1]
    return {r: SiloData.load(out / "world" / f"silo_{r}.npz") for r in ("apac", "eu", "na")}


def test_the_global_b_is_ease_on_the_pooled_training_matrix(federated, silos) -> None:  # type: ignore[no-untyped-def]
    # Prepare: EASE on every silo's training rows stacked, solved in float64 and as the baseline fits it (float32)
    res, out = federated
    x = pooled_matrix(silos)
    pooled64 = ease_weights(gram(x).double(), LAM).numpy()
    baseline = fit_ease(x, LAM).numpy()

    # Execute: the final global model and the version the registry holds for round 1
    arrays, spec, _ = load_global_model(out / "global_model.safetensors")
    version = res["model_versions"][-1]
    registered, _ = ModelRegistry(out / "registry", create=False).load(version["id"])

    # Assert
    b = arrays["item_item.weight"]
    assert (spec.name, version["round"], set(arrays)) == ("ease", 1, {"item_item.weight"})
    np.testing.assert_array_equal(registered["item_item.weight"], b)
    assert np.abs(b - pooled64).max() < 1e-6
    assert np.abs(b - baseline).max() < 1e-6
    assert np.abs(b).max() > 1e-2 and np.all(np.diag(b) == 0)  # a real solve, not zeros


def test_every_region_s_test_metrics_are_the_pooled_ease_baseline_s(federated, silos) -> None:  # type: ignore[no-untyped-def]
    res, _ = federated
    pooled = run_baselines(silos, ["ease"], grids={"ease": [LAM]})["ease"]
    per_region, overall = pool(pooled.centralized)
    fed = res["final"]["federated"]
    assert sorted(fed["per_region"]) == sorted(per_region)
    for region, metrics in per_region.items():
        assert fed["per_region"][region] == pytest.approx(metrics, abs=1e-6, rel=0)
    assert fed["overall"] == pytest.approx(overall, abs=1e-6, rel=0)
    assert res["final"]["centralized"] == res["final"]["federated"]  # the bound is the same solve
    local_per_region, _ = pool(pooled.local_only)  # local-only: each silo's EASE on its own data
    for region, metrics in local_per_region.items():
        assert res["final"]["local_only"]["per_region"][region] == pytest.approx(metrics, abs=1e-6, rel=0)
    assert [e["train_loss"] for e in res["round_log"]] == [{}]


def test_a_forked_region_serves_ease_on_its_own_data(tmp_path: Path) -> None:
    res = experiment(tmp_path, rounds=2, adoption={"apac": {"fork": 0, "contribute": False}})
    assert [e["participants"] for e in res["round_log"]] == [["eu", "na"]] * 2
    assert "does not contribute" in res["round_log"][0]["declined"]["apac"]
    served = res["final"]["served"]["per_region"]["apac"]
    assert served == pytest.approx(res["final"]["local_only"]["per_region"]["apac"], abs=1e-9, rel=0)
    assert res["adoption"]["apac"]["serving"].startswith("fork:")


# --- a hostile silo -----------------------------------------------------------------------------------------


WORLD = SyntheticWorldConfig(n_users=300, n_items=80, region_only_items=4, region_sizes=(2.0, 1.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)


def hostile(msg: Message, ctx: Context, call_next) -> Message:  # type: ignore[no-untyped-def]
    """apac's Gram, tampered with after its ClientApp built it: NaN, then a wrong shape, then asymmetric."""
    reply = call_next(msg, ctx)
    meta = reply.content.config_records.get("meta")
    if msg.metadata.message_type != "train" or meta is None or meta["region"] != "apac":
        return reply
    g = reply.content.array_records["arrays"]["stat.gram"].numpy().copy()
    rnd = int(meta["server-round"])  # type: ignore[call-overload]
    if rnd == 1:
        g[0, 1] = np.nan
    elif rnd == 2:
        g = g[:-1, :-1].copy()
    else:
        g[0, 1] += 5.0
    reply.content["arrays"] = ArrayRecord({"stat.gram": Array(g)})
    return reply


def test_hostile_statistics_are_rejected_and_b_is_ease_of_the_others(tmp_path: Path) -> None:
    # Prepare
    world = prepare_world(generate_world(WORLD), SplitConfig(), tmp_path / "world")
    s = RunSettings(data_dir=str(world.data_dir), output_dir=str(tmp_path / "out"), num_rounds=3, min_nodes=3,
                    model="ease", model_kwargs=json.dumps({"lam": LAM}))

    # Execute
    run_in_process(s, client_mods=[hostile])

    # Assert: each round rejects apac with the reason; B is EASE on eu and na only
    log = json.loads((tmp_path / "out" / "federated_history.json").read_text())["round_log"]
    reasons = [e["rejected"].get("apac", "") for e in log]
    assert "NaN" in reasons[0] and "not symmetric" in reasons[2]
    assert "stat.gram: float32[91, 91] where the model has float32[92, 92]" in reasons[1]
    assert all(e["participants"] == ["eu", "na"] for e in log)
    arrays, _, _ = load_global_model(tmp_path / "out" / "global_model.safetensors")
    others = pooled_matrix({r: world.silos[r] for r in ("eu", "na")})
    expected = ease_weights(torch.from_numpy(gram(others).numpy().astype(np.float64)), LAM).numpy()
    assert np.abs(arrays["item_item.weight"] - expected).max() < 1e-6
    everyone = ease_weights(gram(pooled_matrix(world.silos)).double(), LAM).numpy()
    assert np.abs(arrays["item_item.weight"] - everyone).max() > 1e-3  # apac's data would have moved B
