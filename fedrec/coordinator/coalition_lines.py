"""Coalitions: one global line per coalition, trained in one run (`federation.coalitions`).

Each line is a run of its own over the nodes of its coalition's regions (`LineGrid`: the run's grid showing only
those nodes): its strategy, its current version (the coalition is in the version's identity, so each line's
version 0 is its own), and its output dir `<output>/coalitions/<name>/` (history, checkpoint, global model).
Every line's versions go into the run's one registry. `train-lines` trains only some of the lines (a divestment
rebuilding one line from a version: `start-version` then applies to that line). Preflight runs once, over every
node. Each round trains and then evaluates every line, in name order; a line whose silos all decline stops there
while the others go on.

A region in several coalitions trains for each: its silo keeps each line's users and releases apart and spends
its one budget for all of them (`fedrec.silo.handlers.for_line`). It serves the line of its first coalition in
name order (a silo with `partners`: its first coalition they allow, which the coordinator does not know). The run's
own history (`<output>/federated_history.json`) pools each region's metrics from its first coalition's line (the
coordinator's view, exact from the silos' metric sums); results.json's federated column reads each region's served
line from its silo's own log instead, and `coalitions` holds every line's history.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

from flwr.app import Context
from flwr.serverapp import Grid

from fedrec.coordinator.history import FederationHistory
from fedrec.coordinator.preflight import preflight_or_stop
from fedrec.coordinator.round_loop import CoordinatorRun, RoundCallback
from fedrec.coordinator.round_record import record_round
from fedrec.evaluation import SiloEvaluation, pool
from fedrec.run_lines import coalition_members, coalitions_of, trained_lines
from fedrec.settings import RunSettings, save_run_config

LINES_DIR = "coalitions"


class LineGrid:
    """The run's grid as one coalition line sees it: only its regions' nodes; everything else is the grid's."""

    def __init__(self, grid: Grid, nodes: Iterable[int]) -> None:
        self._grid, self._nodes = grid, frozenset(nodes)

    def get_node_ids(self) -> Iterator[int]:
        """The coalition's nodes among those connected now."""
        return iter([n for n in self._grid.get_node_ids() if n in self._nodes])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def line_settings(s: RunSettings, name: str, members: list[str]) -> RunSettings:
    """One line's coordinator settings: its own output dir, the run's registry, waiting for its members only."""
    root = s.registry_root()
    return dataclasses.replace(
        s, output_dir=str(Path(s.output_dir) / LINES_DIR / name) if s.output_dir else "",
        registry_dir=str(root) if root is not None else "", min_nodes=len(members),
        min_replies=min(s.min_replies, len(members)))


def serving_lines(s: RunSettings, regions: list[str]) -> dict[str, str]:
    """Region → the line it serves (its first coalition in name order)."""
    return {r: coalitions_of(s, r)[0] for r in regions}


def run_lines(grid: Grid, s: RunSettings, *, on_round: RoundCallback | None = None, timeout: float | None = None,
              run_id: str = "", context: Context | None = None, history: FederationHistory | None = None
              ) -> FederationHistory:
    """`run_federation` for a run with coalitions: every line, round by round; the combined history."""
    started = time.perf_counter()
    combined = history if history is not None else FederationHistory()
    combined.run_id = run_id
    coalitions = {name: members for name, members in coalition_members(s).items() if name in trained_lines(s)}
    lines = {name: CoordinatorRun(grid, line_settings(s, name, members), timeout=timeout, run_id=run_id,
                                  context=context, history=None, line=name) for name, members in coalitions.items()}
    first_line = next(iter(lines.values()))
    save_run_config(s)
    node_regions = preflight_or_stop(grid, s, combined, timeout=first_line.timeout,
                                     statistics=first_line.family is not None)
    first: dict[str, int] = {}
    for name, run in lines.items():
        run.node_regions = {n: r for n, r in node_regions.items() if r in coalitions[name]}
        run.grid = cast(Grid, LineGrid(grid, run.node_regions))
        first[name] = run.begin()  # a resumed run: each line after its own last checkpointed round
    stopped: dict[str, str] = {}
    for rnd in range(min(first.values()), s.num_rounds + 1):
        for name, run in lines.items():
            if name in stopped or rnd < first[name]:
                continue
            record = run.round(rnd)
            entry = record_round(run.history, record)
            if on_round is not None:
                on_round({**entry, "coalition": name})
            run.checkpoint(rnd)
            if record.stopped:
                run.stop(record.stopped)
                stopped[name] = record.stopped
    for run in lines.values():
        run.finish(started)
    regions = sorted({r for members in coalition_members(s).values() for r in members})
    combine(combined, lines, serving_lines(s, regions), stopped)
    combined.wall_time_s = time.perf_counter() - started
    combined.save(s.output_dir)
    return combined


def combine(out: FederationHistory, lines: dict[str, CoordinatorRun], serves: dict[str, str],
            stopped: dict[str, str]) -> None:
    """Fill the run's history from its lines': each region sees its serving line; logs and versions of every line.

    Evaluated rounds are those at which any line evaluated; a round's per-region metrics and overall mean are pooled
    from the silos' metric sums of each region's serving line (none under DP: the experiment reads the silos' logs).
    """
    rounds = sorted({e["round"] for run in lines.values() for e in run.history.rounds})
    for rnd in rounds:
        evals: dict[str, SiloEvaluation] = {}
        versions, failures = {}, []
        for name, run in lines.items():
            entry = next((e for e in run.history.rounds if e["round"] == rnd), None)
            if entry is None:
                continue
            versions[name] = entry.get("model_version")
            failures += [f"{name}: {f}" for f in entry.get("failures", [])]
            evals.update({r: SiloEvaluation(**sums) for r, sums in entry.get("metric_sums", {}).items()
                          if serves.get(r) == name})  # from the history: a resumed run has its earlier rounds too
        per_region, overall = pool(evals)
        out.rounds.append({"round": rnd, "evaluated": True, "model_version": None, "coalition_versions": versions,
                           "per_region": per_region, "overall": overall, "failures": failures})
    for name, run in lines.items():
        h = run.history
        out.round_log += [{**e, "coalition": name} for e in h.round_log]
        out.versions += [{**v, "coalition": name} for v in h.versions]
        out.resumed_at = sorted({*out.resumed_at, *h.resumed_at})
        out.coalitions[name] = {"regions": sorted(set(run.node_regions.values())), "history": h.to_json()}
    out.round_log.sort(key=lambda e: e["round"])  # stable: lines in name order within a round
    by_round: dict[int, dict[str, Any]] = {}
    for name, run in lines.items():  # name order: a region's last line's report holds its ledger's ε after the round
        for entry in run.history.privacy_rounds:
            slot = by_round.setdefault(entry["round"], {"round": entry["round"], "per_region": {}, "declined": {}})
            slot["per_region"].update(entry["per_region"])
            slot["declined"].update({r: f"{name}: {why}" for r, why in entry["declined"].items()})
    out.privacy_rounds = [by_round[r] for r in sorted(by_round)]
    if len(stopped) == len(lines):
        out.stopped_early = "; ".join(f"{name}: {why}" for name, why in stopped.items())
