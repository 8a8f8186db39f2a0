"""Preflight: before round 1 every silo checks its own configuration, and the run stops if any is wrong.

A SuperNode starts before it knows what run it will serve, so a missing data file, an unknown region or an
unreadable ledger would otherwise surface as an error in the middle of round 1. The coordinator sends each
connected node a QUERY; the silo resolves its identity from its node config, loads its data, checks its
state dir is writable, opens its privacy ledger under DP and validates its adoption policy, and answers
"ok" or the problem (public: a configuration message, no user data). Regions must be distinct and known to
the world's manifest. Any problem stops the run before anything is trained, naming every bad node.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedrec.data.split import SiloData
from fedrec.errors import ConfigError, FedrecError
from fedrec.federation.egress import check_reply
from fedrec.federation.jurisdiction import SiloIdentity
from fedrec.federation.settings import RunSettings

PREFLIGHT_ERROR = "preflight-error"


def check_silo(s: RunSettings, node_config: dict[str, object]) -> tuple[str, str | None]:
    """(region or "?", the problem or None): everything a silo needs before it can train."""
    region = str(node_config.get("region", "?"))
    try:
        ident = SiloIdentity.from_node_config(dict(node_config), s)
        region = ident.region
        SiloData.load(ident.data_path)
        if ident.state_dir is not None:
            ident.state_dir.mkdir(parents=True, exist_ok=True)
            probe = ident.state_dir / ".preflight"
            probe.write_text("ok")
            probe.unlink()
        if s.privacy_settings().enabled:
            from fedrec.federation.private_silo import open_ledger

            open_ledger(s, ident).epsilon_spent()  # also refuses a δ above the jurisdiction's maximum
        elif ident.requires_dp:
            return region, ("this jurisdiction requires user-level DP (node config epsilon-budget / max-delta) "
                            "but the run has privacy=none")
    except (FedrecError, OSError, ValueError) as exc:
        return region, f"{type(exc).__name__}: {exc}"
    return region, None


def preflight_reply(s: RunSettings, node_config: dict[str, object]) -> RecordDict:
    """The silo's answer to the coordinator's preflight query."""
    region, problem = check_silo(s, node_config)
    meta = ConfigRecord({"region": region, "server-round": 0})
    if problem:
        meta[PREFLIGHT_ERROR] = problem[:1000]
    return check_reply(RecordDict({"meta": meta}), private=True)


def wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    """The connected nodes once at least `n` are (or all there are when `timeout` runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n or time.monotonic() >= deadline:
            return nodes
        time.sleep(0.5)


def run_preflight(grid: Grid, s: RunSettings, regions: list[str], *, timeout: float) -> list[str]:
    """Ask every connected silo to check itself; return the problems (empty: go)."""
    nodes = wait_for_nodes(grid, s.min_nodes, timeout)
    if len(nodes) < s.min_nodes:
        return [f"only {len(nodes)} silo(s) connected within {timeout:g} s, min-nodes is {s.min_nodes}"]
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
    return problems


def preflight_failure(problems: list[str], out_dir: str) -> ConfigError:
    """The error that stops the run (its message lists every problem)."""
    where = f" (also in {Path(out_dir) / 'federated_history.json'})" if out_dir else ""
    return ConfigError("preflight failed, nothing was trained" + where + ":\n  " + "\n  ".join(problems))
