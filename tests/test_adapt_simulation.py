"""`adopt: adapt` in whole runs through `run_experiment` (the real ServerApp and ClientApps on the fake grid).

The `quick` experiment's world with iALS: each region serves its own line unless the global version or one of
its adapted variants beats it on its validation users by a paired test (then the best of those); its own line
is the local-only bound exactly (one sweep per round, never two), and what it serves is never below local-only
on validation. Adapting sends nothing: every
reply each silo sent is the same, byte for byte, as in the same run with `adopt: always`. The same with
MF under `privacy=user_dp` (seeded noise, in process only).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from fakegrid import run_in_process
from rich.console import Console

from fedrec.bounds import local_only_curve
from fedrec.config import ExperimentConfig
from fedrec.data.split import SiloData
from fedrec.experiment import run_experiment
from fedrec.flower.egress_recorder import egress_recorder, read_recorded
from fedrec.report import print_summary
from fedrec.silo.evaluation_log import read_evaluations
from fedrec.silo.serving import OWN_FILE
from tests.test_config import typed

ROUNDS = 3
IALS = ["experiment=quick", "model=ials", "model.dim=8", f"federation.rounds={ROUNDS}", "baselines=[]",
        "bounds=[local_only]"]
# A tiny DP run: RDP at a small ε (a large σ) calibrates in a fraction of the time PLD takes
MF_DP = ["experiment=quick", "dataset.n_users=300", "dataset.n_items=60", "dataset.region_only_items=3",
         "model.dim=4", "federation.rounds=2", "baselines=[]", "bounds=[local_only]", "privacy=user_dp",
         "privacy.steps_per_round=2", "privacy.accountant=rdp", "privacy.epsilon=0.3"]


def run(overrides: list[str], out: Path, engine: Any = run_in_process) -> dict[str, Any]:
    cfg: ExperimentConfig = typed(overrides)
    return run_experiment(cfg, out, log=lambda *_: None, engine=engine)


def recorded(overrides: list[str], out: Path, **engine: Any) -> dict[str, Any]:
    """A run whose silos' replies are all kept as they left (`egress_recorder`, under `out/egress`)."""
    return run(overrides, out, functools.partial(run_in_process, client_mods=[egress_recorder(out / "egress")],
                                                 **engine))


def sent(out: Path) -> list[tuple[Any, ...]]:
    """Everything the silos sent, in a stable order; the version id each reply names is left out (it hashes the
    run config, adoption policies included, so it differs between two runs that differ only in them)."""
    out_ = []
    for r in read_recorded(out / "egress"):
        meta = {k: v for k, v in r.records.get("meta", {}).items() if k != "model-version"}
        others = {k: v for k, v in r.records.items() if k != "meta"}
        arrays = {f"{rec}/{k}": v.tobytes() for rec, a in r.arrays.items() for k, v in a.items()}
        out_.append((r.node_id, r.message_type, meta.get("server-round"), json.dumps([meta, others], sort_keys=True),
                     sorted(arrays.items())))
    assert out_, f"nothing recorded under {out / 'egress'}"
    return sorted(out_, key=lambda t: (t[0], t[1], t[2] or 0))


@pytest.fixture(scope="module")
def ials_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, dict, Path]:
    adapt, always = tmp_path_factory.mktemp("adapt"), tmp_path_factory.mktemp("always")
    return recorded([*IALS, "+adoption.default.adopt=adapt"], adapt), adapt, recorded(IALS, always), always


def test_every_region_serves_its_validation_best_and_never_less_than_local_only(ials_runs) -> None:
    res, out, _, _ = ials_runs
    cfg = typed(IALS)
    for region in res["dataset"]["regions"]:
        silo = SiloData.load(out / "world" / f"silo_{region}.npz")
        local_valid = local_only_curve(silo, cfg.model, cfg.train, epochs=list(range(1, ROUNDS + 1)), seed=cfg.seed,
                                       split="valid")
        decisions = res["adoption"][region]["decisions"]
        assert [d["round"] for d in decisions] == list(range(1, ROUNDS + 1))
        for d, entry in zip(decisions, res["rounds"], strict=True):
            ev = {k: v for k, v in d["evidence"].items() if not k.startswith("p:")}
            p = {k.removeprefix("p:"): v for k, v in d["evidence"].items() if k.startswith("p:")}
            simplest_first = ["global", "adapted:mu=100", "adapted:mu=10", "adapted:mu=1", "adapted:mu=0", "own"]
            assert sorted(ev) == sorted(simplest_first) and sorted(p) == sorted(simplest_first[:-1])
            # the own line is local-only iALS after as many sweeps as rounds (trained once per round)
            local = local_valid[d["round"]].means()["ndcg@20"]
            assert ev["own"] == pytest.approx(local, abs=1e-9, rel=0)
            served = entry["served"][region]
            name = {"global": "global", "own line": "own"}.get(served["kind"], served["version"].rsplit(":", 1)[0])
            # the default confidence (0.95): anything but the own line passed the paired test (Bonferroni over
            # the five others) and is the validation-best of those that passed, ties to the simpler
            level = (1 - 0.95) / 5
            passed = [k for k in simplest_first[:-1] if p[k] < level]
            if name == "own":
                assert not passed
            else:
                assert name in passed and ev[name] == max(ev[k] for k in passed) > local
                assert name == next(k for k in passed if ev[k] == ev[name])
            # the own line's test metrics are reported served or not: the local-only bound's, exactly
            assert entry["own_line"][region]["ndcg@20"] == pytest.approx(entry["local_only"][region]["ndcg@20"],
                                                                         abs=1e-9)
            if served["kind"] == "own line":  # served test metrics are the own line's: local-only's
                assert served["ndcg@20"] == pytest.approx(entry["local_only"][region]["ndcg@20"], abs=1e-9)
            if served["kind"] == "global":
                assert served["ndcg@20"] == pytest.approx(entry["per_region"][region]["ndcg@20"], abs=1e-12)
    assert set(res["final"]["served"]["per_region"]) == set(res["dataset"]["regions"])
    kinds = {e["served"][r]["kind"] for e in res["rounds"] for r in e["served"]}
    assert kinds <= {"global", "adapted", "own line"} and "adapted" in kinds


def test_adapting_sends_nothing_and_the_own_line_stays_in_the_silo(ials_runs) -> None:
    res, out, res_always, out_always = ials_runs
    assert sent(out) == sent(out_always)  # every reply of every silo: its arrays, metrics and metadata
    for region in res["dataset"]["regions"]:
        assert (out / "silo-state" / region / "serving" / OWN_FILE).exists()
        assert not (out_always / "silo-state" / region / "serving" / OWN_FILE).exists()
    assert res["rounds"][-1]["per_region"] == res_always["rounds"][-1]["per_region"]


def test_under_user_dp_the_served_model_stays_in_the_silo(tmp_path: Path) -> None:
    adapt = recorded([*MF_DP, "+adoption.default.adopt=adapt", "+adoption.default.adapt_rounds=2",
                      "+adoption.default.confidence=0"],
                     tmp_path / "adapt", reproducible_noise=True)
    recorded(MF_DP, tmp_path / "always", reproducible_noise=True)
    assert sent(tmp_path / "adapt") == sent(tmp_path / "always")
    evaluations = [r for r in read_recorded(tmp_path / "adapt" / "egress") if r.message_type == "evaluate"]
    assert evaluations and all("metrics" not in r.records and not r.arrays for r in evaluations)
    for region in adapt["dataset"]["regions"]:
        state = tmp_path / "adapt" / "silo-state" / region
        (log,) = (state / "evaluations").glob("run-*.jsonl")  # the silo's own log: the only place its metrics are
        assert [e.served is not None for e in read_evaluations(state, log.stem.removeprefix("run-"))] == [True, True]
        for d in adapt["adoption"][region]["decisions"]:
            assert sorted(d["evidence"]) == ["adapted:rounds=1", "adapted:rounds=2", "global", "own"]
            served = d["served_after"]
            name = "own" if served.startswith("own:") else "global" if ":" not in served else served.rsplit(":", 1)[0]
            assert d["evidence"][name] == max(d["evidence"].values())  # the plain validation-best (confidence 0)
    assert set(adapt["final"]["served"]["per_region"]) == set(adapt["dataset"]["regions"])



def test_the_report_says_which_kind_each_region_serves(ials_runs) -> None:
    res, _, _, _ = ials_runs
    console = Console(record=True, width=200)
    print_summary(res, console=console)
    text = console.export_text()
    assert "served by round" in text
    for region, a in res["adoption"].items():
        row = [line for line in text.splitlines() if line.startswith(f"│ {region} ")][-1]  # the adoption table
        want = {"global": "global ", "adapted": "adapted (mu=", "own line": "own line"}[a["serving_kind"]]
        assert want in row, row
        assert f"{res['final']['served']['per_region'][region]['ndcg@20']:.4f}" in row
        assert f"{res['final']['own_line']['per_region'][region]['ndcg@20']:.4f}" in row  # the fallback, served or not
