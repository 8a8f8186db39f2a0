"""What a simulated run's silos recorded, read back for results.json (the researcher owns every silo).

The federation returns what the coordinator saw (`FederationHistory`); what only the silos know (their metrics under
DP, their validation metrics, what each region serves and why, which coalition line it serves) is in each silo's own
evaluation log and serving record. In a simulation the researcher owns every silo and may read them all
(`SiloView`); a coordinator never can. `fedrec.experiment` builds results.json's rounds and final blocks from both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedrec.coordinator.history import FederationHistory
from fedrec.errors import FedrecError
from fedrec.evaluation import SiloEvaluation, pool
from fedrec.settings import RunSettings, line_key, silo_state_root
from fedrec.silo.adaptation import served_kind
from fedrec.silo.adoption import ServingRecord
from fedrec.silo.evaluation_log import LoggedEvaluation, read_evaluations
from fedrec.silo.state_dir import StateDir

Block = dict[str, Any]
"""`{"overall": {metric: value}, "per_region": {region: {metric: value}}}`, as in results.json."""


def block_of(pooled: tuple[dict[str, dict[str, float]], dict[str, float]]) -> Block:
    """`pool`'s (per region, overall) as results.json's block."""
    per_region, overall = pooled
    return {"overall": overall, "per_region": per_region}


@dataclass(frozen=True)
class SiloView:
    """What the silos' own records say about one run: their evaluation logs, decisions and policies."""

    logs: dict[str, dict[int, LoggedEvaluation]]
    decisions: dict[str, list[dict[str, Any]]]
    policies: dict[str, dict[str, Any]]

    @classmethod
    def read(cls, settings: RunSettings, regions: tuple[str, ...], run_id: str) -> SiloView:
        """Every region's log for `run_id` (only the researcher who owns every silo of a simulation can)."""
        root = silo_state_root(settings)
        if root is None:
            return cls({r: {} for r in regions}, {r: [] for r in regions},
                       {r: asdict(settings.policy_for(r)) for r in regions})
        logs = {r: {e.round: e for e in read_evaluations(root / r, run_id)} for r in regions}
        decisions = {r: [asdict(d) for d in ServingRecord(StateDir(root / r).serving).decisions() if d.run_id == run_id]
                     for r in regions}
        policies = {}
        for r in regions:
            reviewed = next((e for e in logs[r].values() if e.policy is not None), None)  # each line holds it
            policies[r] = reviewed.policy if reviewed and reviewed.policy else asdict(settings.policy_for(r))
        return cls(logs, decisions, policies)

    def evaluations(self, rnd: int) -> dict[str, SiloEvaluation]:
        """Each region's evaluation of the global model at round `rnd` (the regions that logged one)."""
        return {r: e.evaluation for r, log in self.logs.items() if (e := log.get(rnd)) is not None}

    def valid(self, rnd: int) -> dict[str, SiloEvaluation]:
        """Each region's evaluation of the global model at round `rnd` on its validation users (where logged)."""
        return {r: e.valid for r, log in self.logs.items() if (e := log.get(rnd)) is not None and e.valid is not None}

    def served(self, rnd: int) -> dict[str, tuple[SiloEvaluation, dict[str, Any]]]:
        """Each reviewing region's served model at round `rnd`: its metric sums and the decision."""
        return {r: (e.served, e.decision) for r, log in self.logs.items()
                if (e := log.get(rnd)) is not None and e.decision is not None and e.served is not None}

    def own_lines(self, rnd: int) -> dict[str, SiloEvaluation]:
        """Each `adopt: adapt` region's own local-only line at round `rnd`: its test metric sums."""
        return {r: e.own_line for r, log in self.logs.items()
                if (e := log.get(rnd)) is not None and e.own_line is not None}

    def adoption(self) -> dict[str, Any]:
        """Per region: its policy, the version it serves at the end, and every decision of the run."""
        return {r: {"policy": self.policies[r], "serving": d[-1]["served_after"] if d else None,
                    "serving_kind": served_kind(d[-1]["served_after"] if d else None), "decisions": d}
                for r, d in self.decisions.items()}


def federated_rounds(history: FederationHistory, view: SiloView, *, private: bool) -> list[dict[str, Any]]:
    """The evaluated rounds as results.json reports them: the coordinator's entry, plus what the silos kept.

    Under DP the metrics come from the silos' logs (the coordinator never saw them); every round says which
    model each reviewing region serves after it (`served`: its test metrics, version label and kind: global,
    adapted, own line or fork) and, for `adopt: adapt` regions, their own local-only line (`own_line`), served
    or not.
    """
    rounds = []
    for entry in history.rounds:
        rnd = entry["round"]
        out = dict(entry)
        if private or history.coalitions:  # with lines: the line each region serves, as its silo chose it
            per_region, overall = pool(view.evaluations(rnd))
            out.update(per_region=per_region, overall=overall, metrics_source="silo logs")
        out["served"] = {r: {**ev.means(), "version": d["served_after"], "kind": served_kind(d["served_after"]),
                             "adopted": d["adopted"], "reason": d["reason"]} for r, (ev, d) in view.served(rnd).items()}
        if own := view.own_lines(rnd):
            out["own_line"] = {r: ev.means() for r, ev in own.items()}
        rounds.append(out)
    return rounds


def coalitions_block(history: FederationHistory, settings: RunSettings, *, private: bool) -> dict[str, Any]:
    """Per coalition line: its regions, its head version and its last evaluation per region (every member's).

    `federated` in results.json shows each region the line it serves (read from its silo's log); this shows every
    line. Under DP the metrics come from the silos' logs: another line's under the line's key (`settings.line_key`),
    the served line's under the run's.
    """
    out: dict[str, Any] = {}
    root = silo_state_root(settings)
    served = served_lines(history, root)
    for name, line in history.coalitions.items():
        h = FederationHistory.from_json(line["history"])
        last = h.rounds[-1] if h.rounds else None
        block: dict[str, Any] = {"regions": line["regions"], "head": h.versions[-1]["id"] if h.versions else None,
                                 "rounds_trained": sum(1 for e in h.round_log if e.get("model_version")),
                                 "stopped_early": h.stopped_early, "round": last["round"] if last else None}
        per_region, overall = (last["per_region"], last["overall"]) if last else ({}, {})
        if private and last is not None and root is not None:
            evals = {}
            for r in line["regions"]:  # another line's log is under its key, the served line's under the run's
                logged = {e.round: e for e in read_evaluations(root / r, line_key(history.run_id, name))}
                if not logged and served.get(r) == name:
                    logged = {e.round: e for e in read_evaluations(root / r, history.run_id)}
                if (e := logged.get(last["round"])) is not None:
                    evals[r] = e.evaluation
            per_region, overall = pool(evals)
        out[name] = {**block, "overall": overall, "per_region": per_region,
                     "served_by": sorted(r for r, n in served.items() if n == name)}
    return out


def served_lines(history: FederationHistory, root: Path | None) -> dict[str, str]:
    """Region → the coalition line it serves, as its silo's logs show (simulation; {} without state dirs).

    A silo logs the line it serves under the run's key and its other lines under theirs (`settings.line_key`): the
    served line is the one of its lines without a log of its own. (A silo whose partners forbid every line serves
    none.)
    """
    if root is None:
        return {}
    out = {}
    for name, line in history.coalitions.items():
        for r in line["regions"]:
            if not read_evaluations(root / r, line_key(history.run_id, name)) and read_evaluations(root / r,
                                                                                                    history.run_id):
                out[r] = name
    return out


def checked_rounds(history: FederationHistory, view: SiloView, *, private: bool) -> list[dict[str, Any]]:
    """`federated_rounds`, or a clear error when the federation trained nothing or its last model went unevaluated."""
    rounds = federated_rounds(history, view, private=private)
    if not rounds:
        raise FedrecError(f"the federation trained no round ({history.stopped_early or 'no silo replied'}); "
                          "a silo whose privacy budget is spent needs a larger privacy.epsilon or a fresh "
                          "privacy.state_dir (budgets are meant to persist: never reset a real silo's ledger)")
    if not rounds[-1]["per_region"]:
        failed = [f for r in history.rounds for f in r.get("failures", [])]
        raise FedrecError(f"no silo could evaluate the federation's last model (round {rounds[-1]['round']}): "
                          f"{(failed or [history.stopped_early or 'no reply'])[-1][:500]}")
    return rounds


def federated_finals(rounds: list[dict[str, Any]], view: SiloView) -> dict[str, Block]:
    """`final`'s federation blocks at the last evaluated round: the global model, what regions serve, own lines."""
    last = rounds[-1]["round"]
    final: dict[str, Block] = {"federated": {"overall": rounds[-1]["overall"], "per_region": rounds[-1]["per_region"]}}
    if served_last := {r: ev for r, (ev, _) in view.served(last).items()}:
        final["served"] = block_of(pool(served_last))
    if own_last := view.own_lines(last):
        final["own_line"] = block_of(pool(own_last))
    return final


