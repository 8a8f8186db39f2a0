"""What a silo does with each message it receives, decided here and Flower-free (the ClientApp only adapts).

A training message gets a cached reply re-sent the way it left, a decline (secure aggregation required,
a coalition or a lineage the jurisdiction's `partners` forbid, a region that forked and does not contribute,
DP required but not proposed, a spent budget, kept users it may not continue: `fedrec.silo.provenance`), a new
update (a DP round under `privacy=user_dp`), or for a statistics model (`model=ease` / `ials`) the silo's statistics.
An evaluation message is evaluated in the silo, reviewed by the region's adoption policy, logged in the silo,
and answered with metric sums only when not private.
Every reply is built by `egress`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flwr.app import RecordDict

from fedrec.data.split import SiloData
from fedrec.errors import FedrecError
from fedrec.messages import read_arrays, read_coalition, read_decline, read_int, read_version
from fedrec.settings import RunSettings, line_key
from fedrec.silo.adaptation import advance_own_line, own_start, review_adapted
from fedrec.silo.coalition import (
    coalition_problem,
    lawful_lines,
    line_problem,
    served_line,
    version_makers,
    version_problem,
)
from fedrec.silo.departure import has_left
from fedrec.silo.egress import check_reply, decline_reply, evaluate_reply, statistics_reply, train_reply
from fedrec.silo.evaluation_log import log_evaluation
from fedrec.silo.policy import SiloIdentity
from fedrec.silo.private_round import private_train
from fedrec.silo.provenance import Provenance, continuing_problem
from fedrec.silo.review import advance_fork, review
from fedrec.silo.round import InvalidGlobalModel, check_received, fit_and_evaluate, silo_seed, train_round
from fedrec.silo.secure_aggregation import PLAIN, aggregation_of
from fedrec.silo.serving import RegionServing
from fedrec.silo.state import SiloState
from fedrec.statistics import is_statistics_model, statistics_family
from fedrec.training import Arrays
from fedrec.versions import ModelRegistry

FORKED = "this region serves its own fork and does not contribute to the federation (on any of its lines)"
LEFT = "this region left the federation (fedrec leave): it trains on, reviews and releases nothing it is sent"


@dataclass(frozen=True)
class Silo:
    """One message's view of the silo: the run's proposal, the jurisdiction's policy, its data and state."""

    s: RunSettings
    ident: SiloIdentity
    data: SiloData
    run_key: str
    """What this message's line keys the silo's users, optimizer, last reply and DP releases by (`line_key`)."""
    state: SiloState
    line: str = ""
    """The coalition line the message belongs to ("" in a run of one line)."""
    serves: bool = True
    """This line is the one the region reviews and serves (its first coalition in name order that its partners
    allow): its fork, own line, guard and adoption decisions follow it; its other lines are trained and evaluated
    only."""
    log_key: str = ""
    """What the region's serving records and evaluation log key the run by (the run key for the serving line)."""
    plan_key: str = ""
    """What the DP plan is stored under: one plan per run, over every line the region trains in."""
    lines: int = 1
    """How many lines this region trains in (its DP plan covers rounds × lines releases)."""

    @property
    def seed_label(self) -> str:
        """What names this line's training seeds: the region on its serving line, `REGION@LINE` on its others.

        So a line trains as a run of its members alone would, and a region's other lines make their own draws.
        """
        return self.ident.region if self.serves else line_key(self.ident.region, self.line)

    def __post_init__(self) -> None:
        if not self.log_key:
            object.__setattr__(self, "log_key", self.run_key)
        if not self.plan_key:
            object.__setattr__(self, "plan_key", self.run_key)


class LineRefused(FedrecError):
    """A message names a coalition line this region does not train in (or a run without lines names one)."""


def for_line(silo: Silo, content: RecordDict) -> Silo:
    """The silo as the message's coalition line sees it; `LineRefused` for a line the region is not in.

    The region's lines come from the run config's `coalitions` (which regions train together is the run's
    proposal; a jurisdiction's `partners` decide whether it takes part at all, `fedrec.silo.coalition`): a line
    declared with a region its partners forbid is none of its lines, so it neither trains in it nor reviews or
    serves from it; it serves its `serve-coalition`, else the first line its law allows (`served_line`).
    """
    line, s, region = read_coalition(content), silo.s, silo.ident.region
    mine = s.coalitions_of(region)
    if not mine and not line:
        return silo
    if line not in mine:
        raise LineRefused(f"the message names coalition line {line[:80]!r}; region {region!r} trains in "
                          f"{mine or 'no coalition line (this run has one line)'}")
    members = s.coalition_members()
    if why := line_problem(silo.ident, line, members[line]):
        raise LineRefused(why)
    if line not in s.trained_lines():
        raise LineRefused(f"coalition line {line!r} is not trained in this run (train-lines={s.train_lines!r})")
    mine = [c for c in lawful_lines(silo.ident, members) if c in s.trained_lines()]
    key = line_key(silo.run_key, line)
    serves = line == served_line(silo.ident, members)
    # a fast divestment's rebuilt line continues the users this silo trained in the same line of the earlier run
    earlier = line_key(s.users_from, line) if s.users_from else ""
    return dataclasses.replace(silo, run_key=key, state=silo.state.for_run(key, users_from=earlier), line=line,
                               serves=serves, log_key=silo.run_key if serves else key, plan_key=silo.run_key,
                               lines=len(mine))


def train_message(silo: Silo, content: RecordDict, reproducible_noise: bool = False) -> RecordDict:
    """The reply to a training message: a cached reply re-sent the way it left, a decline, or a new update."""
    s, ident = silo.s, silo.ident
    rnd, version = read_int(content, "config", "server-round"), received_version(content)
    try:
        silo = for_line(silo, content)
    except LineRefused as exc:
        return decline_reply(region=ident.region, server_round=rnd, reason=str(exc))
    how = aggregation_of(content.config_records["config"])
    if has_left(ident.state_dir):  # `fedrec leave`: the region serves its own line and sends nothing more
        return decline_reply(region=ident.region, server_round=rnd, reason=LEFT)
    if ident.require_secure_aggregation and how == PLAIN:
        reason = "this jurisdiction requires secure aggregation (node config): it sends no update in the clear"
        return decline_reply(region=ident.region, server_round=rnd, reason=reason)
    if ident.partners is not None and (why := coalition_problem(ident, content, read_arrays(content))):
        return decline_reply(region=ident.region, server_round=rnd, reason=why)
    cached = silo.state.cached_reply(rnd, version)
    if cached is not None:  # asked again (a restarted coordinator): the same reply, not a second release ...
        sent_as, content = cached
        if sent_as != how:  # ... and only the way it left: never in the clear, or masked for another session
            reason = (f"round {rnd} was already answered ({sent_as}); a silo answers a round once and never "
                      f"again under another aggregation ({how})")
            return decline_reply(region=ident.region, server_round=rnd, reason=reason)
        return check_reply(content, private=s.privacy_settings().enabled)
    last = silo.state.last_round()
    if not s.privacy_settings().enabled and (not 1 <= rnd <= s.num_rounds or (last is not None and rnd <= last)):
        # Training on extra or out-of-order rounds would move the silo's own state (its users, its private item
        # corrections, the guard's own moves) with models the coordinator chose: once per round, in order. (Under
        # DP the ledger decides: a repeated round is no second release, and the plan caps the rounds.)
        reason = (f"round {rnd} is out of order: this run has rounds 1-{s.num_rounds} and this silo last trained "
                  f"round {last or 0}; a silo trains once per round, in order")
        return decline_reply(region=ident.region, server_round=rnd, reason=reason)
    continued = silo.state.continued()  # the users and moments this round starts from, and what shaped them
    private = s.privacy_settings().enabled
    if why := continuing_problem(ident, s.model_spec, silo.state.run_key, continued, private=private):
        return decline_reply(region=ident.region, server_round=rnd, reason=why)
    # what the users this round saves are shaped by, recorded with them (makers: as a silo with partners checked them)
    makers = version_makers(content) if ident.partners is not None else None
    silo.state.keeping((continued[1] if continued else Provenance()).then(private=private, makers=makers))
    arrays = read_arrays(content)
    check_received(arrays, s.model_spec, n_items=silo.data.n_items)
    content = train_content(silo, rnd, version, arrays, reproducible_noise)
    if read_decline(content) is None:
        silo.state.cache_reply(rnd, version, content, how)
        serving = serving_of(ident) if silo.serves else None
        if serving is not None and "arrays" in content.array_records:  # the guard's bound: how far it moved rows
            serving.note_own_move(rnd, arrays, read_arrays(content), n_items=silo.data.n_items)
    return content


def train_content(silo: Silo, rnd: int, version: str, arrays: Arrays, reproducible_noise: bool) -> RecordDict:
    """A new training reply: the region's fork first, then a DP round, a refusal, or a plain round."""
    s, ident, state = silo.s, silo.ident, silo.state
    serving = serving_of(ident) if silo.serves else None  # the region's own choices follow its serving line
    if serving is not None:  # the guard's first reference: version 0 as the silo builds it from the run's seed
        serving.keep_guard_base(lambda: own_start(s.model_spec, silo.data.n_items, s.seed) or arrays)
    if serving is not None and ident.policy.kind == "adapt":  # the region's own line: local only, never sent
        advance_own_line(serving, silo.data, s.model_spec, s.train_config(), server_round=rnd,
                         received_version=version or f"round-{rnd - 1}", received_arrays=arrays,
                         seed=silo_seed(s.seed, ident.region + "/own", rnd), run_id=silo.log_key, run_seed=s.seed)
    if serving is not None and ident.policy.kind == "fork":
        fork = advance_fork(serving, silo.data, s.model_spec, s.train_config(), server_round=rnd,
                            received_version=version or f"round-{rnd - 1}", received_arrays=arrays,
                            local=state.local(), seed=silo_seed(s.seed, ident.region + "/fork", rnd),
                            run_id=silo.log_key)
        if fork is not None and not ident.policy.contribute:
            return decline_reply(region=ident.region, server_round=rnd, reason=FORKED)
    if serving is None and ident.policy.kind == "fork" and not ident.policy.contribute and silo.line:
        # another line of the region's: once its fork (of its serving line) is started or due, it sends nothing here
        forked = serving_of(ident)
        due = ident.policy.from_round is not None and rnd - 1 >= ident.policy.from_round
        if due or (forked is not None and forked.fork() is not None):
            return decline_reply(region=ident.region, server_round=rnd, reason=FORKED)
    if s.privacy_settings().enabled:
        return private_train(s, ident, silo.data, state, silo.run_key, rnd, arrays, version,
                             reproducible_noise=reproducible_noise, plan_key=silo.plan_key, lines=silo.lines,
                             seed_label=silo.seed_label)
    if ident.requires_dp:
        reason = ("this jurisdiction requires user-level DP (node config epsilon-budget / max-delta) but the "
                  "run has privacy=none: nothing released")
        return decline_reply(region=ident.region, server_round=rnd, reason=reason)
    if is_statistics_model(s.model_spec):  # EASE / iALS: its statistics, summed at the coordinator
        stats = statistics_family(s.model_spec).local_statistics(silo.data, arrays, s.model_spec)
        return statistics_reply(stats, region=ident.region, server_round=rnd, model_version=version)
    out = train_round(silo.data, s.model_spec, arrays, state.local(), s.train_config(),
                      seed=silo_seed(s.seed, silo.seed_label, rnd), optimizer_state=state.optimizer())
    state.save_local(out.local_after)
    state.save_optimizer(out.optimizer_after)
    weight = float(out.n_examples) if s.weighting == "examples" else 1.0
    return train_reply(out.global_after, region=ident.region, server_round=rnd, weight=weight, model_version=version,
                       loss=out.loss)


def evaluate_message(silo: Silo, content: RecordDict) -> RecordDict:
    """Evaluate the received version in the silo, let the region review it, reply (under DP: nothing but 'kept')."""
    s, ident = silo.s, silo.ident
    rnd = read_int(content, "config", "server-round")
    if has_left(ident.state_dir):  # no review (its pointer stays on its own line), no metrics
        return evaluate_reply(None, region=ident.region, server_round=rnd)
    silo = for_line(silo, content)  # a line this region is not in: an error reply (a fixed code)
    arrays = read_arrays(content)
    check_received(arrays, s.model_spec, n_items=silo.data.n_items)
    if ident.partners is not None and version_problem(ident, content, arrays) is not None:
        # a version the jurisdiction's partners forbid (or whose makers it cannot check): not evaluated, not reviewed
        return evaluate_reply(None, region=ident.region, server_round=rnd)
    continued = silo.state.continued() if ident.partners is not None else None
    if continuing_problem(ident, s.model_spec, silo.state.run_key, continued, private=False) is not None:
        return evaluate_reply(None, region=ident.region, server_round=rnd)  # its users: a forbidden partner's work
    local = silo.state.local()
    seed = silo_seed(s.seed, silo.seed_label, rnd)
    serving = serving_of(ident) if silo.serves else None
    reviewed_on_valid = serving is not None and ident.policy.kind in ("if_better", "adapt")
    splits = ("test", "valid") if reviewed_on_valid or rnd == s.num_rounds else ("test",)  # last: for tuning
    fitted, evals = fit_and_evaluate(silo.data, s.model_spec, arrays, local, s.train_config(), seed=seed,
                                     splits=splits)
    ev = evals["test"]
    candidate = received_version(content) or f"round-{rnd}"
    if serving is not None and ident.policy.kind == "adapt":  # served: global, adapted or own line (in the silo)
        rv = review_adapted(serving, silo.data, s.model_spec, s.train_config(), server_round=rnd, candidate=candidate,
                            candidate_arrays=arrays, local=local, candidate_valid=evals["valid"], candidate_test=ev,
                            seed=seed, adapt_seed=silo_seed(s.seed, ident.region + "/adapt", rnd),
                            run_id=silo.log_key)
        log_evaluation(ident, run_id=silo.log_key, server_round=rnd, ev=ev, review=rv, valid=evals.get("valid"))
    elif serving is not None:  # the region's own choice of model, decided and evaluated in the silo
        rv = review(serving, silo.data, s.model_spec, s.train_config(), server_round=rnd,
                    candidate=candidate, candidate_arrays=arrays, local=local,
                    candidate_test=ev, candidate_valid=evals.get("valid"), candidate_model=fitted, seed=seed,
                    fetch=lambda v: fetch_version(s, v), run_id=silo.log_key)
        log_evaluation(ident, run_id=silo.log_key, server_round=rnd, ev=ev, review=rv, valid=evals.get("valid"))
    elif ident.state_dir is not None and silo.line:  # another line of the region's: evaluated, not reviewed
        log_evaluation(ident, run_id=silo.log_key, server_round=rnd, ev=ev, valid=evals.get("valid"))
    if s.privacy_settings().enabled or ident.requires_dp:
        return evaluate_reply(None, region=ident.region, server_round=rnd)
    return evaluate_reply(ev, region=ident.region, server_round=rnd)


def received_version(content: RecordDict) -> str:
    """The global version a message names, refused when it has a ':'.

    A region records a served global version under its name and tells its own models apart by a prefix of the
    same label (`fork:`, `own:`, `adapted:`): a version named "own:…" would be recorded, and reported, as the
    region's own line. Version ids are hex digests; the check reads only the message.
    """
    version = read_version(content)
    if ":" in version:
        raise InvalidGlobalModel(f"model-version {version[:80]!r}: a version id has no ':'")
    return version


def serving_of(ident: SiloIdentity) -> RegionServing | None:
    """The region's serving state (None for a silo without a state dir: it serves what the federation sends)."""
    return RegionServing(ident.state_dir, ident.policy) if ident.state_dir is not None else None


def fetch_version(s: RunSettings, version: str) -> tuple[str, Arrays] | None:
    """A global version from the run's registry when this silo can read it (simulation); None otherwise."""
    root = s.registry_root()
    if root is None or not (root / "versions").is_dir():
        return None
    try:
        arrays, found = ModelRegistry(root, create=False).load(version)
    except (FedrecError, ValueError):
        return None
    return found.id, arrays
