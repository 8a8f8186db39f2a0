"""A hostile silo in a federation of real Flower apps: its updates are rejected and the aggregate is unaffected.

The real ServerApp and ClientApps run in process on tests/fakegrid.py's FakeGrid (no Ray); test_fakegrid.py
checks that this gives the same models, bit for bit, as Flower's simulation engine.

apac's replies are tampered with after its ClientApp built them (a Flower mod, as a compromised node
would): round 1 scaled 1000x, round 2 NaN, round 3 claiming another model version. The same run with
apac simply not contributing must produce bit-identical global models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fakegrid import run_in_process
from flwr.app import Array, ArrayRecord, Context, Message

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.model_io import load_global_model
from fedrec.settings import RunSettings
from fedrec.world import prepare_world

WORLD = SyntheticWorldConfig(n_users=300, n_items=80, region_only_items=4, region_sizes=(2.0, 1.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)


def hostile(msg: Message, ctx: Context, call_next) -> Message:  # type: ignore[no-untyped-def]
    reply = call_next(msg, ctx)
    meta = reply.content.config_records.get("meta")
    if msg.metadata.message_type != "train" or meta is None or meta["region"] != "apac":
        return reply
    rnd = int(meta["server-round"])  # type: ignore[call-overload]
    arrays = {k: v.numpy() for k, v in reply.content.array_records["arrays"].items()}
    if rnd == 1:
        arrays = {k: v * 1000 for k, v in arrays.items()}
    elif rnd == 2:
        arrays = {k: np.full_like(v, np.nan) for k, v in arrays.items()}
    else:
        meta["model-version"] = "0" * 64
    reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return reply


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world")).data_dir


def simulate(out: Path, world_dir: Path, *, adoption: str = "{}", mods: list | None = None
             ) -> tuple[dict, dict[str, np.ndarray]]:
    s = RunSettings(data_dir=str(world_dir), output_dir=str(out), num_rounds=3, min_nodes=3, dim=6, batch_size=64,
                    n_negatives=16, adoption=adoption)
    run_in_process(s, client_mods=mods)
    arrays, _, _ = load_global_model(out / "global_model.safetensors")
    return json.loads((out / "federated_history.json").read_text()), arrays


def test_hostile_updates_are_rejected_and_the_aggregate_is_as_without_them(world_dir: Path, tmp_path: Path) -> None:
    history, attacked = simulate(tmp_path / "attacked", world_dir, mods=[hostile])
    _, without = simulate(tmp_path / "without", world_dir, adoption=json.dumps({"apac": {"fork": 0,
                                                                                        "contribute": False}}))
    reasons = [entry["rejected"] for entry in history["round_log"]]
    assert [set(r) for r in reasons] == [{"apac"}] * 3
    assert "median" in reasons[0]["apac"] and "NaN" in reasons[1]["apac"] and "stale" in reasons[2]["apac"]
    assert all(entry["participants"] == ["eu", "na"] for entry in history["round_log"])
    assert set(attacked) == set(without)
    assert all(np.array_equal(attacked[k], without[k]) for k in attacked)
