"""A silo under `privacy=user_dp`: its ledger, its plan, a DP round that is recorded before it is released.

Order of a private training round, all inside the silo:
1. open the silo's ledger (its state dir) and the run's plan (σ calibrated once, stored in the ledger);
2. record the round's release in the ledger on disk (file-locked, atomic) if it fits the budget and was
   not released before — else decline without training;
3. train with user-level DP (`privacy.dp_round`): the spend is on record before any private computation,
   so a round that fails is spent too and failures are no free probe;
4. hand the noised global parameters and the public DP report to `egress`.
Evaluation results under DP stay in the silo: appended to its own log (`evaluation_log`), never put in a reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import RecordDict

from fedrec.data.split import SiloData
from fedrec.privacy.dp_round import DpTrainConfig, train_round_dp
from fedrec.privacy.ledger import BudgetLedger, Decline, Release
from fedrec.privacy.noise import NoiseSource
from fedrec.privacy.plan import BudgetSpent, PrivacyPlan, make_plan
from fedrec.settings import RunSettings
from fedrec.silo.egress import decline_reply, statistics_reply, train_reply
from fedrec.silo.policy import PolicyRefusal, SiloIdentity
from fedrec.silo.round import silo_seed
from fedrec.silo.state import SiloState
from fedrec.silo.state_dir import StateDir
from fedrec.statistics import is_statistics_model
from fedrec.statistics.dp_ials import release as release_statistics
from fedrec.training import Arrays, Tensors

PRIVACY_LEDGER_FILE = StateDir.PRIVACY_LEDGER
REPRODUCIBLE_REFUSED = ("this jurisdiction has its own privacy policy (node config epsilon-budget / max-delta) and "
                        "draws its noise only from its own CSPRNG: reproducible (seeded) noise is refused")


def open_ledger(s: RunSettings, ident: SiloIdentity) -> BudgetLedger:
    """The silo's ledger at `<state-dir>/privacy_ledger.json`, at the jurisdiction's δ and budget.

    Raises `PolicyRefusal` when the run proposes a δ the jurisdiction does not accept, or when a deployed
    silo has no ε budget of its own. Nothing about the silo's data enters δ or the budget: both are policy.
    """
    p = s.privacy_settings()
    if ident.deployed and ident.epsilon_budget is None:
        raise PolicyRefusal(f"jurisdiction {ident.region!r} sets no epsilon-budget in its node config: a deployed "
                            "silo takes its ε budget from its own policy, never from the run's proposal")
    return BudgetLedger(StateDir(ident.require_state_dir()).privacy_ledger,
                        budget_epsilon=p.budget_for(ident.region, ident.epsilon_budget),
                        delta=ident.delta_for(p.delta), accountant=p.accountant)


def mechanism_of(s: RunSettings) -> str:
    """How this run's model releases under DP: one statistics release per round (iALS) or DP-SGD steps."""
    return "dp_statistics" if is_statistics_model(s.model_spec) else "dp_sgd"


def run_plan(ledger: BudgetLedger, s: RunSettings, run_id: str, lines: int = 1, first_round: int = 1
             ) -> PrivacyPlan | Decline:
    """The plan this silo fixed for `run_id` (calibrated and stored on first use), or why it cannot train.

    σ is calibrated at the run's proposed δ when it is tighter than the ledger's (never looser: the
    jurisdiction refused that in `open_ledger`), so the run keeps its promise at both. A region in `lines`
    coalition lines releases once per round for each: the plan covers rounds × lines releases. (The count comes
    from the run config; a coordinator that sends more lines than it declared only meets the budget sooner: the
    ledger declines every release past it.) A plan fixed at `first_round` > 1 (a run continuing a registered
    line, `start_version`) covers the rounds left, `num_rounds - first_round + 1`: fewer releases, less noise
    each; a coordinator that starts late only plans fewer releases, and the ledger declines any beyond the budget.
    """
    mechanism = mechanism_of(s)
    stored = ledger.plan_for(run_id)
    if stored is not None:
        plan = PrivacyPlan(**stored)
        if plan.mechanism != mechanism:  # a run id is one run: its model cannot change under the plan
            return Decline(f"run {run_id!r} was planned for {plan.mechanism}, this message asks for {mechanism}",
                           ledger.epsilon_spent())
        return plan
    p = s.privacy_settings()
    try:
        plan = make_plan(p, budget=ledger.budget_epsilon, delta=min(p.delta, ledger.accountant.delta),
                         rounds=max(1, s.num_rounds - first_round + 1) * max(1, lines),
                         prior=list(ledger.accountant.events),
                         mechanism=mechanism)
    except BudgetSpent as exc:
        return Decline(str(exc), ledger.epsilon_spent())
    try:
        return PrivacyPlan(**ledger.save_plan(run_id, plan.to_dict()))
    except ValueError:  # another process fixed this run's plan first (under the ledger's lock): keep that one
        stored = ledger.plan_for(run_id)
        assert stored is not None
        return PrivacyPlan(**stored)


def privacy_report(ledger: BudgetLedger, plan: PrivacyPlan | None, run_id: str, epsilon: float | None = None
                   ) -> dict[str, float]:
    """Where the silo stands (public): ε spent at its δ, σ, q, this run's steps, C and its budget.

    Steps count this run's releases only (over every coalition line of it: `RUN@LINE` keys): a lifetime total
    would tell the coordinator how much the silo trained in other federations.
    """
    run = run_id.split("@", 1)[0]
    return {
        "epsilon": ledger.epsilon_spent() if epsilon is None else epsilon,
        "delta": ledger.accountant.delta,
        "noise_multiplier": plan.noise_multiplier if plan else 0.0,
        "sample_rate": plan.sample_rate if plan else 0.0,
        "steps": float(sum(r.event.steps for r in ledger.releases if r.run_id.split("@", 1)[0] == run)),
        "release_steps": float(plan.steps_per_round if plan else 0),
        "clip_norm": plan.clip_norm if plan else 0.0,
        "budget_epsilon": ledger.budget_epsilon,
    }


@dataclass(frozen=True)
class PrivateRound:
    """Outcome of a private round: either a recorded release (arrays + report + state to keep) or a decline."""

    report: dict[str, float]
    statistics: Arrays | None = None
    """A statistics model's noised release (`stat.*`), instead of global parameters."""
    global_after: Arrays | None = None
    local_after: Tensors | None = None
    optimizer_after: Arrays | None = None
    declined: str | None = None


def private_train_round(silo: SiloData, s: RunSettings, ident: SiloIdentity, *, run_id: str, server_round: int,
                        global_arrays: Arrays, local: Tensors | None, optimizer_state: Arrays | None,
                        reproducible_noise: bool = False, plan_key: str = "", lines: int = 1,
                        seed_label: str = "") -> PrivateRound:
    """Steps 1-4 of the module docstring; the caller passes the result to `egress`.

    `run_id` keys the release (once per round and key); `plan_key` (default `run_id`) the plan, over `lines`
    coalition lines; `seed_label` (default the region) names the reproducible noise stream, one per line.

    Noise and sampling come from the OS CSPRNG. `reproducible_noise` (in-process research and tests only,
    never from a run config) seeds them from the run's seed instead; a jurisdiction with its own privacy
    policy refuses it.
    """
    if reproducible_noise and ident.requires_dp:
        return PrivateRound(report={}, declined=REPRODUCIBLE_REFUSED)
    try:
        ledger = open_ledger(s, ident)
    except PolicyRefusal as exc:
        return PrivateRound(report={}, declined=str(exc))
    plan = run_plan(ledger, s, plan_key or run_id, lines, first_round=server_round)
    if isinstance(plan, Decline):
        return PrivateRound(report=privacy_report(ledger, None, run_id), declined=plan.reason)
    release = ledger.authorize(run_id=run_id, server_round=server_round, event=plan.event())
    if not isinstance(release, Release):
        return PrivateRound(report=privacy_report(ledger, plan, run_id), declined=release.reason)
    # Spent from here on, whatever happens: a round that fails (out of memory, say) is not a free probe.
    seed = silo_seed(s.seed, seed_label or ident.region, server_round)
    noise = NoiseSource("seeded", seed=seed) if reproducible_noise else NoiseSource("secure")
    if plan.mechanism == "dp_statistics":
        assert release.event == plan.event() and plan.event().sample_rate == 1.0  # one release over every user
        stats = release_statistics(silo, global_arrays, s.model_spec, clip_norm=plan.clip_norm,
                                   max_per_user=plan.max_per_user, noise_multiplier=plan.noise_multiplier,
                                   noise=noise)
        return PrivateRound(report=privacy_report(ledger, plan, run_id, release.epsilon_after), statistics=stats)
    dp = DpTrainConfig(clip_norm=plan.clip_norm, noise_multiplier=plan.noise_multiplier,
                       sample_rate=plan.sample_rate, steps_per_round=plan.steps_per_round,
                       max_per_user=plan.max_per_user, normaliser=plan.normaliser)
    out = train_round_dp(silo, s.model_spec, global_arrays, local, s.train_config(), dp, seed=seed, noise=noise,
                         optimizer_state=optimizer_state)
    assert out.event == release.event  # what was recorded is what ran
    return PrivateRound(report=privacy_report(ledger, plan, run_id, release.epsilon_after),
                        global_after=out.global_after,
                        local_after=out.local_after, optimizer_after=out.optimizer_after)


def private_train(s: RunSettings, ident: SiloIdentity, silo: SiloData, state: SiloState, run_key: str, rnd: int,
                  arrays: Arrays, version: str = "", *, reproducible_noise: bool = False, plan_key: str = "",
                  lines: int = 1, seed_label: str = "") -> RecordDict:
    """A user-level DP round: recorded in the silo's ledger before its noised update is put in the reply.

    `run_key` keys the release (a coalition line's key), `plan_key` the run's plan over its `lines` lines.
    """
    out = private_train_round(silo, s, ident, run_id=run_key, server_round=rnd, global_arrays=arrays,
                              local=state.local(), optimizer_state=state.optimizer(),
                              reproducible_noise=reproducible_noise, plan_key=plan_key or run_key, lines=lines,
                              seed_label=seed_label or ident.region)
    if out.declined is not None:
        return decline_reply(region=ident.region, server_round=rnd, reason=out.declined, privacy=out.report or None)
    if out.statistics is not None:  # iALS: the round's noised statistics, recorded in the ledger already
        return statistics_reply(out.statistics, region=ident.region, server_round=rnd, model_version=version,
                                privacy=out.report)
    assert out.global_after is not None and out.local_after is not None and out.optimizer_after is not None
    state.save_local(out.local_after)
    state.save_optimizer(out.optimizer_after)
    return train_reply(out.global_after, region=ident.region, server_round=rnd, weight=1.0, privacy=out.report,
                       model_version=version)
