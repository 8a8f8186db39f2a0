"""Divest regions from a trained line: exact (retrain without them) or fast (subtract them, then recover).

- **exact**: the registry records which regions contributed to each version. The line is rebuilt from the last
  version none of the removed regions touched (version 0 when they took part from round 1), training only the
  remaining regions up to the head's round: a new run started from that version (`federation.start_version`,
  `federation.exclude_regions`). Without DP it equals a run in which they never took part from the same start.
- **fast** (approximate, in the spirit of FedEraser, Liu et al. 2021): the coordinator kept each region's part
  of every round (`federation.keep_contributions`, `fedrec.coordinator.contributions`). For one region the line is
  replayed from its start with the others' recorded updates, each round averaged without the region; for several,
  their direct parts are subtracted from the head. A few recovery rounds of the remaining regions then calibrate
  the result, each silo continuing its own users' parameters from the trained run (`users_from`; they never left
  it). What the removed regions did to the other regions' later updates (they trained on a model the
  removed ones had moved) stays: the removal test (`fedrec.divestment.evidence`) measures what is left.

A run of coalition lines (`federation.coalitions`) is divested line by line (`divest_lines`, exact or fast: each
line keeps its own contributions, and each silo's recovery rounds continue the users it trained in that line):
every line the regions shaped is rebuilt without them, the others are left as they are.

Every version of a divested line records in its manifest what was removed, how, from which version, and which
line head it replaces (`divestment`). Nothing is deleted: the old line stays in the registry for audit. The rebuilt
line is evaluated once, at its head: the remaining regions keep serving what they served (the old line) until the
rebuilt head is ready, then review it under their own adoption policy; none of them is shown the rebuild's weak
early versions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrec.coordinator.coalition_lines import LINES_DIR
from fedrec.coordinator.contributions import ContributionLedger
from fedrec.coordinator.history import FederationHistory
from fedrec.errors import ConfigError
from fedrec.run_lines import coalition_members, excluded_regions, trained_lines
from fedrec.settings import RunSettings, read_manifest, silo_state_root
from fedrec.versions import ModelRegistry, ModelVersion
from fedrec.versions.lineage import last_untouched, shaped_by

Engine = Callable[..., FederationHistory]
METHODS = ("exact", "fast")
RECOVERY_SHARE = 0.3
"""Fast divestment's default recovery rounds: this share of the rounds exact divestment would train (at least 1)."""


@dataclass(frozen=True)
class Divestment:
    """What one divestment did: the new line and what it cost."""

    method: str
    removed: list[str]
    replaces: str
    """The head of the line the removed regions had shaped."""
    rebuilt_from: str
    """Exact: the last version they never touched; fast: the head with their contributions subtracted."""
    head: str
    """The new line's head (what the remaining regions adopt in place of `replaces`)."""
    rounds: int
    silo_rounds: int
    """Local trainings the rebuild cost (rounds x remaining silos that trained): the cost unit compared."""
    wall_time_s: float
    per_region: dict[str, dict[str, float]]
    overall: dict[str, float]
    output_dir: str
    history: FederationHistory = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "history"}


def line_head(settings: RunSettings) -> str:
    """The last version of the run whose settings these are (from its `federated_history.json`)."""
    path = Path(settings.output_dir) / "federated_history.json"
    try:
        versions = json.loads(path.read_text())["model_versions"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read the run's versions from {path}: {exc}") from exc
    if not versions:
        raise ConfigError(f"{path} lists no model version: the run trained nothing")
    return str(versions[-1]["id"])


@dataclass(frozen=True)
class DivestmentPlan:
    """The run that rebuilds a line without some regions: its settings, and what it removes from which head."""

    run: RunSettings
    """The rebuilt line's run config (start version, the regions left out, the divestment record, ...)."""
    replaces: ModelVersion
    start: ModelVersion
    record: dict[str, Any]

    def run_config_changes(self, original: RunSettings) -> dict[str, Any]:
        """The run-config keys that differ from the original run's: what an operator passes to `flwr run`."""
        old = original.to_run_config()
        return {k: v for k, v in self.run.to_run_config().items() if old.get(k) != v}


def plan_divestment(settings: RunSettings, regions: list[str], *, method: str, out_dir: Path,
                    head: str | None = None, recovery_rounds: int | None = None) -> DivestmentPlan:
    """The run that removes `regions` from the line ending at `head` (default: the run's last version).

    Nothing is trained. For `fast` the head less the regions' kept contributions is registered (the version the
    recovery rounds start from). In a simulation `divest` runs the plan; in a deployment the operators start it
    (`fedrec divest --deployment` prints the run-config keys that change).
    """
    if method not in METHODS:
        raise ConfigError(f"divestment method {method!r}: choose one of {METHODS}")
    root = settings.registry_root()
    if root is None:
        raise ConfigError("the run has no registry (registry-dir or output-dir): nothing records who shaped it")
    registry = ModelRegistry(root, create=False)
    head_version = registry.get(head or line_head(settings))
    world = list(read_manifest(settings.data_dir)["regions"])
    if unknown := sorted(set(regions) - set(world)):
        raise ConfigError(f"cannot divest unknown region(s) {unknown}; the world's regions: {world}")
    if not regions:
        raise ConfigError("name at least one region to divest")
    shaped = shaped_by(registry, head_version.id)
    if not set(regions) & set(shaped):
        raise ConfigError(f"region(s) {sorted(regions)} never contributed to the line ending at "
                          f"{head_version.short_id} (contributors: {sorted(shaped)}): nothing to divest")
    excluded = sorted(set(excluded_regions(settings)) | set(regions))
    lines = {n: [r for r in m if r not in excluded] for n, m in coalition_members(settings).items()}
    # A rebuilt coalition line keeps only the members that shaped it: a region declared in the line that never
    # trained in it (its law forbade a removed region, say) must neither start training in it nor, the line now
    # lawful for it, switch to serving it. A region left in no line is left out of the rebuild (it trains nothing).
    lines = {n: [r for r in m if r in shaped or n not in trained_lines(settings)] for n, m in lines.items()}
    if lines:
        excluded = sorted({*excluded, *(r for r in world if not any(r in m for m in lines.values()))})
    remaining = [r for r in world if r not in excluded]
    trained = [r for n in trained_lines(settings) for r in lines[n]] if lines else remaining
    if not remaining or not trained:
        raise ConfigError(f"divesting {sorted(regions)} leaves no region to train")
    record: dict[str, Any] = {"removed": sorted(regions), "method": method, "replaces": head_version.id,
                              **({"line": head_version.coalition} if head_version.coalition else {})}
    if method == "exact":
        start = last_untouched(registry, head_version.id, regions)
        rounds = head_version.round - start.round
    else:
        exact_rounds = head_version.round - last_untouched(registry, head_version.id, regions).round
        rounds = recovery_rounds if recovery_rounds is not None else max(1, math.floor(RECOVERY_SHARE * exact_rounds))
        if rounds < 1:
            raise ConfigError(f"recovery rounds must be >= 1, got {rounds}")
        start = _subtracted(settings, registry, head_version, sorted(regions), record)
    record["from_version"] = start.id
    state_root = silo_state_root(settings)  # the silos keep serving (and spending) where they did: no new state
    run = dataclasses.replace(
        settings, output_dir=str(out_dir), registry_dir=str(registry.root), start_version=start.id,
        state_dir=str(state_root) if state_root is not None else "",
        exclude_regions=",".join(excluded), num_rounds=start.round + rounds, min_nodes=len(remaining),
        eval_every=rounds,  # evaluated (and so reviewed by the silos) once, at its head: no weak early version served
        divestment=json.dumps(record, sort_keys=True), resume=False, run_name="",
        users_from=_run_key(settings) if method == "fast" else "",
        # a coalition line's rebuild: every line without the removed regions, so each silo still knows what it serves
        coalitions=json.dumps({n: m for n, m in lines.items() if m}, sort_keys=True) if lines else "{}")
    return DivestmentPlan(run=run, replaces=head_version, start=start, record=record)


def divest(settings: RunSettings, regions: list[str], *, method: str, out_dir: Path, engine: Engine,
           head: str | None = None, recovery_rounds: int | None = None, **engine_kw: Any) -> Divestment:
    """Remove `regions` from the line ending at `head` (default: the run's last version) of the run `settings` ran.

    The rebuilt line's run (`plan_divestment`) writes into `out_dir` and registers its versions in the run's
    registry; the remaining silos keep their state dirs (their serving pointers, ledgers and budgets carry on).
    `engine` runs the federation (`fedrec.flower.simulation.run_simulation`, or the tests' in-process grid).
    """
    if len(trained_lines(settings)) > 1:
        raise ConfigError("a run of coalition lines is divested line by line (`divest_lines`; `fedrec divest` does it)")
    plan = plan_divestment(settings, regions, method=method, out_dir=out_dir, head=head,
                           recovery_rounds=recovery_rounds)
    start = plan.start
    t = time.perf_counter()
    history = engine(plan.run, **engine_kw)
    wall = time.perf_counter() - t
    trained = [e for e in history.round_log if e.get("participants")]
    if not history.versions or history.versions[-1]["id"] == start.id:
        raise ConfigError(f"the rebuilt line trained no round ({history.stopped_early or 'no silo replied'})")
    rounds = history.rounds  # a coalition line's rebuild: that line's own evaluation, every member's
    if history.coalitions:
        rounds = next(iter(history.coalitions.values()))["history"]["rounds"]
    last = rounds[-1] if rounds else {"per_region": {}, "overall": {}}
    return Divestment(method=method, removed=sorted(regions), replaces=plan.replaces.id, rebuilt_from=start.id,
                      head=str(history.versions[-1]["id"]), rounds=len(trained),
                      silo_rounds=sum(len(e["participants"]) for e in trained), wall_time_s=wall,
                      per_region=dict(last["per_region"]), overall=dict(last["overall"]), output_dir=str(out_dir),
                      history=history)


def line_view(settings: RunSettings, line: str) -> RunSettings:
    """Coalition line `line` of a run with coalitions, as the run that trains it alone (`train-lines`).

    Its output dir is the line's (its history, its head); its registry and its silos' state dirs stay the run's, and
    so do the other lines in `coalitions`: each silo still serves the line it served (`plan_divestment` rebuilds
    from this).
    """
    root, state = settings.registry_root(), silo_state_root(settings)
    return dataclasses.replace(
        settings, train_lines=line, output_dir=str(Path(settings.output_dir) / LINES_DIR / line),
        registry_dir=str(root) if root is not None else "", state_dir=str(state) if state is not None else "")


def divested_lines(settings: RunSettings, regions: list[str]) -> dict[str, list[str]]:
    """A run with coalitions: line → the given regions that shaped it (the lines to rebuild), or a clear error."""
    root = settings.registry_root()
    if root is None:
        raise ConfigError("the run has no registry (registry-dir or output-dir): nothing records who shaped it")
    registry = ModelRegistry(root, create=False)
    out = {}
    for line, members in coalition_members(settings).items():
        shaped = shaped_by(registry, line_head(line_view(settings, line)))
        if removed := sorted(set(regions) & set(members) & set(shaped)):
            out[line] = removed
    if not out:
        raise ConfigError(f"region(s) {sorted(regions)} shaped none of the run's coalition lines "
                          f"({', '.join(coalition_members(settings))}): nothing to divest")
    return out


def divest_lines(settings: RunSettings, regions: list[str], *, method: str, out_dir: Path, engine: Engine,
                 recovery_rounds: int | None = None, **engine_kw: Any) -> dict[str, Divestment]:
    """`divest` for a run with coalitions: every line the regions shaped, rebuilt without them.

    Each line is rebuilt as `divest` rebuilds a run of one line (`line_view`), into `out_dir/LINE`; its versions
    record the line they replace (`divestment.line`). Lines the regions never shaped are left as they are. `fast`
    subtracts the contributions the line kept (`federation.keep_contributions=true`: each line keeps its own) and
    each silo's recovery rounds continue the users it trained in that line.
    """
    return {line: divest(line_view(settings, line), removed, method=method, out_dir=out_dir / line, engine=engine,
                         recovery_rounds=recovery_rounds, **engine_kw)
            for line, removed in divested_lines(settings, regions).items()}


def _run_key(settings: RunSettings) -> str:
    """The run key the run's silos kept their state under (its run-name, else Flower's run id)."""
    if settings.run_name:
        return settings.run_name
    path = Path(settings.output_dir) / "federated_history.json"
    try:
        return str(json.loads(path.read_text())["run_id"])
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read the run's id from {path}: {exc}") from exc


def _subtracted(settings: RunSettings, registry: ModelRegistry, head: ModelVersion, regions: list[str],
                record: dict[str, Any]) -> ModelVersion:
    """The head less the kept contributions of `regions`, registered as a version of the divested line."""
    ledger = ContributionLedger.load(Path(settings.output_dir))
    if ledger.head != head.id:
        raise ConfigError(f"the run kept contributions up to version {ledger.head[:16]}, not {head.short_id}: fast "
                          "divestment subtracts from the version its contributions end at (use exact)")
    if len(regions) == 1:  # the others' recorded updates, each round averaged without the region
        subtracted, how = ledger.reweighted_without(registry.load(ledger.start)[0], regions[0]), "reweighted"
    else:  # several regions: their direct parts only (the ledger follows one region's reweighted line at a time)
        subtracted, how = ledger.without(registry.load(head.id)[0], regions), "direct"
    return registry.add(subtracted, spec=head.model_spec(), parent=head.id, round=head.round,
                        contributors=(), strategy=f"divest:subtract({','.join(regions)})",
                        config_hash=head.config_hash,
                        divestment={**record, "step": f"subtract ({how})", "from_version": head.id})
