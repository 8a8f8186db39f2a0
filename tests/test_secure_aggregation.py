"""SecAgg+ (`secure-aggregation=secaggplus`) in a real Flower simulation: what leaves is masked, the mean is right.

The same 2-round federation runs plain and with SecAgg+; a recorder mod at the ClientApp boundary keeps every
reply each silo sends. Under SecAgg+ no reply carries a parameter in the clear, and the global models of the
two runs agree up to SecAgg+'s quantization. One region declining (a non-contributing fork) contributes
zeros and does not change the mean.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError
from fedrec.flower.egress_recorder import egress_recorder, read_recorded
from fedrec.flower.simulation import run_simulation
from fedrec.model_io import load_global_model
from fedrec.settings import RunSettings
from fedrec.silo.egress_ledger import EGRESS_LEDGER_FILE, verify
from fedrec.versions import ModelRegistry
from fedrec.world import PreparedWorld, prepare_world

pytestmark = pytest.mark.slow
WORLD = SyntheticWorldConfig(n_users=300, n_items=60, region_only_items=3, region_sizes=(1.0, 1.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> PreparedWorld:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world"))


def simulate(world: PreparedWorld, out: Path, **kw: object) -> tuple[dict, dict[str, np.ndarray]]:
    s = RunSettings(data_dir=str(world.data_dir), output_dir=str(out), num_rounds=2, min_nodes=3, dim=6,
                    batch_size=64, n_negatives=16, **kw)  # type: ignore[arg-type]
    run_simulation(s, client_mods=[egress_recorder(out / "egress")])
    arrays, _, _ = load_global_model(out / "global_model.safetensors")
    return json.loads((out / "federated_history.json").read_text()), arrays


@pytest.fixture(scope="module")
def runs(world, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict, dict]]:
    root = tmp_path_factory.mktemp("secagg")
    fork = json.dumps({"apac": {"fork": 0, "contribute": False}})
    out = {}
    for name, kw in {"plain": {}, "secure": {"secure_aggregation": "secaggplus"},
                     "plain-fork": {"adoption": fork},
                     "secure-fork": {"secure_aggregation": "secaggplus", "adoption": fork}}.items():
        out[name] = (root / name, *simulate(world, root / name, **kw))
    return out


def test_no_parameter_leaves_a_silo_in_the_clear(runs) -> None:
    path, history, _ = runs["secure"]
    train = [r for r in read_recorded(path / "egress") if r.message_type == "train"]
    assert train, "the recorder saw the silos' training replies"
    masked = [r for r in train if Key.MASKED_PARAMETERS in r.records.get(RECORD_KEY_CONFIGS, {})]
    assert len(masked) == 2 * 3  # every silo, every round
    assert all(r.arrays == {} for r in train)  # no array left in the clear, in any stage
    # what did travel in the clear with the masked vector: public metadata and the weight
    assert all(set(r.records["meta"]) <= {"region", "server-round", "model-version"} for r in masked)
    assert all(e["participants"] == ["apac", "eu", "na"] for e in history["round_log"])


def first_aggregate(run: tuple[Path, dict, dict]) -> dict[str, np.ndarray]:
    """The global model after round 1 (one aggregation of identical silo updates in both runs)."""
    path, history, _ = run
    version = next(v["id"] for v in history["model_versions"] if v["round"] == 1)
    return ModelRegistry(path / "registry", create=False).load(version)[0]


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert set(a) == set(b)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def test_the_secure_mean_matches_the_plain_one(runs) -> None:
    # SecAgg+ quantizes with 2^22 levels over [-8, 8]: one aggregation is exact to ~1e-5
    assert max_diff(first_aggregate(runs["plain"]), first_aggregate(runs["secure"])) < 2e-5
    # (later rounds train from slightly different models, so they drift apart like any perturbed run)
    assert max_diff(runs["plain"][2], runs["secure"][2]) < 0.1


def test_a_declining_region_adds_nothing_under_secagg(runs) -> None:
    _, history, _ = runs["secure-fork"]
    assert all(e["participants"] == ["eu", "na"] and "apac" in e["declined"] for e in history["round_log"])
    assert max_diff(first_aggregate(runs["plain-fork"]), first_aggregate(runs["secure-fork"])) < 2e-5


def test_every_secagg_message_is_in_the_egress_ledger(runs, world) -> None:
    path, _, _ = runs["secure"]
    for region in world.regions:
        ledger = path / "silo-state" / region / EGRESS_LEDGER_FILE
        kinds = [json.loads(line)["kind"] for line in ledger.read_text().splitlines()]
        assert kinds.count("train:secagg") == 2 * 3  # setup, key shares, unmask per round
        assert verify(ledger).ok


def test_secagg_refuses_weights_it_cannot_mask() -> None:
    with pytest.raises(ConfigError, match="weighting=uniform"):
        RunSettings(secure_aggregation="secaggplus", weighting="examples")


def test_coalition_lines_are_masked_too(world, tmp_path) -> None:
    """Each coalition line runs its own SecAgg+ rounds among its members; its mean is the plain line's."""
    from fakegrid import run_in_process

    lines = json.dumps({"atlantic": ["eu", "na"], "pacific": ["na", "apac"]})
    first = {}
    for name, kw, engine in (("plain", {}, run_in_process),
                             ("secure", {"secure_aggregation": "secaggplus"}, run_simulation)):
        s = RunSettings(data_dir=str(world.data_dir), output_dir=str(tmp_path / name), num_rounds=2, min_nodes=3,
                        dim=6, batch_size=64, n_negatives=16, coalitions=lines, **kw)  # type: ignore[arg-type]
        h = engine(s)
        assert [(e["coalition"], e["participants"]) for e in h.round_log] == [
            ("atlantic", ["eu", "na"]), ("pacific", ["apac", "na"])] * 2
        registry = ModelRegistry(tmp_path / name / "registry", create=False)
        first[name] = {v.coalition: registry.load(v.id)[0] for v in registry.list() if v.round == 1}
    for line in ("atlantic", "pacific"):
        assert max_diff(first["plain"][line], first["secure"][line]) < 2e-5
