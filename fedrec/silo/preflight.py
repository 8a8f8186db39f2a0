"""Preflight, the silo's half: before round 1 a silo checks its own configuration and answers ok or the problem.

A SuperNode starts before it knows what run it will serve, so a missing data file, an unknown region or an
unreadable ledger would otherwise surface as an error in the middle of round 1. The coordinator sends each
connected node a QUERY; the silo resolves its identity from its node config, loads its data, checks its
state dir is writable, opens its privacy ledger under DP and validates its adoption policy, and answers
"ok" or the problem (public: a configuration message, no user data). The coordinator's half is
`fedrec.coordinator.preflight`.
"""

from __future__ import annotations

import contextlib

from flwr.app import ConfigRecord, RecordDict

from fedrec.data.split import SiloData
from fedrec.errors import FedrecError
from fedrec.messages import PREFLIGHT_ERROR
from fedrec.run_lines import coalition_members
from fedrec.settings import RunSettings
from fedrec.silo.egress import check_reply
from fedrec.silo.policy import SiloIdentity


def check_silo(s: RunSettings, node_config: dict[str, object]) -> tuple[str, str | None]:
    """(region or "?", the problem or None): everything a silo needs before it can train."""
    region = str(node_config.get("region", "?"))
    try:
        ident = SiloIdentity.from_node_config(dict(node_config), s)
        region = ident.region
        SiloData.load(ident.data_path)
        if coalition_members(s):
            from fedrec.silo.coalition import served_line

            served_line(ident, coalition_members(s))  # a serve-coalition it does not train in: said now
        if ident.state_dir is not None:
            ident.state_dir.mkdir(parents=True, exist_ok=True)
            probe = ident.state_dir / ".preflight"
            probe.write_text("ok")
            probe.unlink()
        if s.privacy_settings().enabled:
            from fedrec.privacy.plan import BudgetSpent, make_plan
            from fedrec.silo.private_round import mechanism_of, open_ledger

            ledger = open_ledger(s, ident)  # also refuses a δ above the jurisdiction's maximum
            ledger.epsilon_spent()
            p = s.privacy_settings()
            # calibrating σ now (not stored) surfaces a budget no noise can meet before round 1; a spent
            # budget is the silo's decline in round 1, not a broken configuration
            with contextlib.suppress(BudgetSpent):
                make_plan(p, budget=ledger.budget_epsilon, delta=min(p.delta, ledger.accountant.delta),
                          rounds=s.num_rounds, prior=list(ledger.accountant.events), mechanism=mechanism_of(s))
        elif ident.requires_dp:
            return region, ("this jurisdiction requires user-level DP (node config epsilon-budget / max-delta) "
                            "but the run has privacy=none")
    except (FedrecError, OSError, ValueError) as exc:
        return region, f"{type(exc).__name__}: {exc}"
    return region, None


def preflight_reply(s: RunSettings, node_config: dict[str, object]) -> RecordDict:
    """The silo's answer to the coordinator's preflight query."""
    region, problem = check_silo(s, node_config)
    return preflight_answer(region, problem)


def preflight_answer(region: str, problem: str | None) -> RecordDict:
    """The preflight reply: the silo's region and its problem, if any (public configuration facts only)."""
    meta = ConfigRecord({"region": region, "server-round": 0})
    if problem:
        meta[PREFLIGHT_ERROR] = problem[:1000]
    return check_reply(RecordDict({"meta": meta}), private=True)
