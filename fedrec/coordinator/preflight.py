"""Preflight, the coordinator's half: before round 1 ask every connected silo to check itself.

Each silo answers "ok" or its problem (`fedrec.silo.preflight`); regions must be distinct and known to the
world's manifest. Any problem stops the run before anything is trained, naming every bad node.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedrec.coordinator.history import FederationHistory
from fedrec.coordinator.strategies import trimming_problem
from fedrec.errors import ConfigError
from fedrec.messages import PREFLIGHT_ERROR
from fedrec.run_lines import check_coalition_regions, participating_regions
from fedrec.settings import RunSettings, read_manifest


def wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    """The connected nodes once at least `n` are (or all there are when `timeout` runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n or time.monotonic() >= deadline:
            return nodes
        time.sleep(0.5)


def run_preflight(grid: Grid, s: RunSettings, regions: list[str], *, timeout: float, statistics: bool = False
                  ) -> tuple[list[str], dict[int, str]]:
    """Ask every connected silo to check itself: (the problems (empty: go), node id → the region it answered)."""
    nodes = wait_for_nodes(grid, s.min_nodes, timeout)
    if len(nodes) < s.min_nodes:
        return [f"only {len(nodes)} silo(s) connected within {timeout:g} s, min-nodes is {s.min_nodes}"], {}
    if problem := trimming_problem(s, len(nodes), statistics=statistics):
        return [problem], {}
    queries = [Message(RecordDict({"config": ConfigRecord({"server-round": 0})}), dst_node_id=node,
                       message_type=MessageType.QUERY, group_id="preflight") for node in nodes]
    replies = list(grid.send_and_receive(queries, timeout=timeout))
    problems: list[str] = []
    seen: dict[str, int] = {}
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            problems.append(f"node {node}: {str(reply.error.reason)[:500]}")
            continue
        meta = reply.content.config_records["meta"]
        region = str(meta["region"])
        if PREFLIGHT_ERROR in meta:
            problems.append(f"node {node} (region {region}): {meta[PREFLIGHT_ERROR]!s}")
        elif region not in regions:
            problems.append(f"node {node}: region {region!r} is not one of this federation's regions {regions}")
        elif region in seen:
            problems.append(f"nodes {seen[region]} and {node} both claim region {region!r}")
        seen.setdefault(region, node)
    answered = {r.metadata.src_node_id for r in replies}
    problems += [f"node {n}: no answer to the preflight check within {timeout:g} s" for n in nodes if n not in answered]
    return problems, {node: region for region, node in seen.items()}


def preflight_failure(problems: list[str], out_dir: str) -> ConfigError:
    """The error that stops the run (its message lists every problem)."""
    where = f" (also in {Path(out_dir) / 'federated_history.json'})" if out_dir else ""
    return ConfigError("preflight failed, nothing was trained" + where + ":\n  " + "\n  ".join(problems))


def preflight_or_stop(grid: Grid, s: RunSettings, history: FederationHistory, *, timeout: float, statistics: bool
                      ) -> dict[int, str]:
    """Every taking-part silo checks its configuration before round 1: node id → region, or a clear stop."""
    regions = participating_regions(s, list(read_manifest(s.data_dir)["regions"]))
    check_coalition_regions(s, regions)
    if s.min_nodes > len(regions):
        raise ConfigError(f"min-nodes={s.min_nodes} but only {len(regions)} region(s) of the world take part "
                          f"({', '.join(regions)}; exclude-regions={s.exclude_regions!r}): the run would wait "
                          "for silos that cannot come")
    problems, node_regions = run_preflight(grid, s, regions, timeout=timeout, statistics=statistics)
    if problems:
        history.stopped_early = "preflight failed: " + "; ".join(problems)
        history.save(s.output_dir)
        raise preflight_failure(problems, s.output_dir)
    return node_regions
