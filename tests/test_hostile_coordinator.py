"""A curious or hostile coordinator against a silo's DP guarantee, through the real ClientApp.

Each test plays one attack of the "silo owns its privacy" review: the coordinator controls the run config
(every key, the seed, paths, δ, dimensions) and the messages (rounds, versions, replays); it reads every reply
and every error. The jurisdiction controls only its node config. Each attack must be refused or harmless.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict

from fedrec.data.split import SiloData, SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError, DataError, FedrecError
from fedrec.flower.client_app import make_client_app
from fedrec.models import ModelSpec, local_state
from fedrec.models.base import PER_USER_KEYS
from fedrec.privacy.dp_round import DpTrainConfig, train_round_dp
from fedrec.privacy.noise import NoiseSource
from fedrec.silo.egress_ledger import EGRESS_LEDGER_FILE as EGRESS_LEDGER
from fedrec.silo.egress_ledger import EgressLedger, verify
from fedrec.silo.error_replies import ERRORS_FILE, FIXED_REASONS, INTERNAL_REASON
from fedrec.silo.private_round import PRIVACY_LEDGER_FILE
from fedrec.silo.secure_aggregation import AGGREGATION_KEY
from fedrec.training import TrainConfig, assemble_model, initial_global_arrays
from fedrec.world import PreparedWorld, prepare_world
from tests.test_client_egress import instruction

WORLD = SyntheticWorldConfig(n_users=150, n_items=40, region_only_items=2, region_sizes=(3.0, 2.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)
DP_RUN = {"privacy": "user_dp", "privacy-epsilon": 3.0, "privacy-sample-rate": 0.2, "privacy-steps-per-round": 2,
          "privacy-max-per-user": 8, "num-rounds": 3, "dim": 8, "batch-size": 64, "n-negatives": 16,
          "min-nodes": 3}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> PreparedWorld:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world"))


def run_config(world: PreparedWorld, tmp: Path, **kw: object) -> dict:
    """What a coordinator sends: its own paths for everything it may name."""
    return {"data-dir": str(world.data_dir), "output-dir": str(tmp / "coordinator-out"),
            "state-dir": str(tmp / "coordinator-chosen-state"), **DP_RUN, **kw}


def deployed(world: PreparedWorld, tmp: Path, region: str = "eu", budget: float | None = 3.0, **kw: object) -> dict:
    """A jurisdiction's node config: its own data path, state dir and (unless `budget=None`) ε budget."""
    own = {"epsilon-budget": budget} if budget is not None else {}
    return {"region": region, "data-path": str(world.data_dir / f"silo_{region}.npz"),
            "state-dir": str(tmp / f"{region}-own-state"), **own, **kw}


def ctx(node_config: dict, run_cfg: dict, run_id: int = 1) -> Context:
    return Context(run_id=run_id, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_cfg)


def train(ctx_: Context, world: PreparedWorld, rnd: int = 1, *, dim: int = 8, app=None) -> Message:  # type: ignore[no-untyped-def]
    arrays = initial_global_arrays(ModelSpec("mf", dim), n_items=world.n_items, seed=0)
    return (app or make_client_app())(instruction(MessageType.TRAIN, arrays, rnd), ctx_)


def meta(reply: Message) -> dict:
    return dict(reply.content.config_records["meta"])


# ---- 1. predictable noise ----------------------------------------------------------------------------


def test_the_same_run_config_and_seed_twice_releases_different_updates(world, tmp_path) -> None:
    # The coordinator fixes the seed and everything else; two silos in identical state (or one silo asked
    # twice in two runs) must still release different arrays: the noise is not a function of the run config.
    cfg = run_config(world, tmp_path, seed=1234)
    a = train(ctx(deployed(world, tmp_path / "a"), cfg), world)
    b = train(ctx(deployed(world, tmp_path / "b"), cfg), world)
    assert "declined" not in meta(a) and "declined" not in meta(b)
    ea, eb = a.content.array_records["arrays"], b.content.array_records["arrays"]
    assert not np.allclose(ea["item_emb.weight"].numpy(), eb["item_emb.weight"].numpy())


def test_a_run_config_cannot_ask_for_seeded_noise(world, tmp_path) -> None:
    reply = train(ctx(deployed(world, tmp_path), run_config(world, tmp_path, **{"privacy-noise": "seeded"})), world)
    assert reply.has_error() and reply.error.reason == FIXED_REASONS[ConfigError]
    assert "privacy-noise" in (tmp_path / "eu-own-state" / ERRORS_FILE).read_text()  # the why stays in the silo
    assert not (tmp_path / "eu-own-state" / PRIVACY_LEDGER_FILE).exists()


def test_a_jurisdiction_with_its_own_budget_refuses_reproducible_noise_even_in_process(world, tmp_path) -> None:
    app = make_client_app(reproducible_noise=True)
    reply = train(ctx(deployed(world, tmp_path, budget=2.0), run_config(world, tmp_path)), world, app=app)
    assert "reproducible (seeded) noise is refused" in meta(reply)["declined"]
    assert "arrays" not in reply.content


# ---- 2. the coordinator picks the ledger or the data -----------------------------------------------------


def test_a_deployed_silo_keeps_its_ledger_where_its_node_config_says_whatever_the_run_config_names(
        world, tmp_path) -> None:
    node = deployed(world, tmp_path)
    first = train(ctx(node, run_config(world, tmp_path / "run1"), run_id=1), world)
    # a second run names a fresh state dir and output dir: a fresh budget, if the silo listened
    second = train(ctx(node, run_config(world, tmp_path / "run2"), run_id=2), world)
    assert not (tmp_path / "run1" / "coordinator-chosen-state").exists()
    assert not (tmp_path / "run2" / "coordinator-out").exists()
    releases = json.loads((tmp_path / "eu-own-state" / PRIVACY_LEDGER_FILE).read_text())["releases"]
    assert [r["run_id"] for r in releases] == ["1", "2"]  # one ledger: run 2 spends on top of run 1
    assert meta(second)["dp-epsilon"] > meta(first)["dp-epsilon"]


def test_a_deployed_silo_without_its_own_state_dir_refuses_dp(world, tmp_path) -> None:
    node = deployed(world, tmp_path)
    node.pop("state-dir")
    reply = train(ctx(node, run_config(world, tmp_path)), world)
    assert reply.has_error() and reply.error.reason == FIXED_REASONS[ConfigError]
    assert not (tmp_path / "coordinator-chosen-state").exists() and not (tmp_path / "coordinator-out").exists()


def test_a_deployed_silo_never_reads_data_from_the_run_config(world, tmp_path) -> None:
    node = deployed(world, tmp_path)
    node.pop("data-path")  # the run config's data-dir holds silo_eu.npz: the silo must not use it
    reply = train(ctx(node, run_config(world, tmp_path)), world)
    assert reply.has_error() and "arrays" not in (reply.content if reply.has_content() else {})


# ---- 3. and 4. δ is the jurisdiction's public policy ------------------------------------------------------


def test_a_large_delta_from_the_coordinator_is_refused_with_the_reason(world, tmp_path) -> None:
    loose = train(ctx(deployed(world, tmp_path / "a"), run_config(world, tmp_path, **{"privacy-delta": 0.5})), world)
    assert "accepts at most δ=1e-05" in meta(loose)["declined"] and "arrays" not in loose.content
    node = deployed(world, tmp_path / "b", **{"max-delta": 1e-4})
    above = train(ctx(node, run_config(world, tmp_path, **{"privacy-delta": 1e-3})), world)
    assert "max-delta" in meta(above)["declined"]
    tighter = train(ctx(node, run_config(world, tmp_path, **{"privacy-delta": 1e-7})), world, rnd=2)
    # accepted: the ledger is kept at the jurisdiction's δ; σ was calibrated at the tighter proposal
    assert "declined" not in meta(tighter) and meta(tighter)["dp-delta"] == 1e-4
    assert not (tmp_path / "a" / "eu-own-state" / PRIVACY_LEDGER_FILE).exists()


def _silo_of(n_users: int, path: Path) -> Path:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(n_users), 3)
    items = rng.integers(0, 30, size=len(users))
    one = np.arange(n_users)
    SiloData(region="eu", n_users=n_users, n_items=30, explicit=False,
             train=(users, items, np.ones(len(users), dtype=np.float32)),
             valid=(one, rng.integers(0, 30, n_users), np.ones(n_users, dtype=np.float32)),
             test=(one, rng.integers(0, 30, n_users), np.ones(n_users, dtype=np.float32))).save(path)
    return path


def test_silos_of_9999_and_10001_users_publish_the_same_delta_and_sigma(tmp_path) -> None:
    # The old default δ (largest power of ten <= 1/(10 users)) flipped between these two sizes
    published = []
    for n in (9_999, 10_001):
        node = {"region": "eu", "data-path": str(_silo_of(n, tmp_path / f"silo-{n}.npz")),
                "state-dir": str(tmp_path / f"state-{n}"), "epsilon-budget": 3.0}
        cfg = {**DP_RUN, "privacy-sample-rate": 0.01, "privacy-steps-per-round": 1, "min-nodes": 1}
        arrays = initial_global_arrays(ModelSpec("mf", 8), n_items=30, seed=0)
        reply = make_client_app()(instruction(MessageType.TRAIN, arrays, 1), ctx(node, cfg))
        published.append({k: v for k, v in meta(reply).items() if k in ("dp-delta", "dp-noise-multiplier")})
    assert published[0] == published[1] and published[0]["dp-delta"] == 1e-6


# ---- 5. no user's hidden state depends on another user's data ---------------------------------------------


class _AlignedNoise(NoiseSource):
    """A test hook: the k-th draw of a run equals the k-th draw of the other run (prefix for fewer users).

    User u is the silo's last user (its interactions last too), so dropping u drops the last entry of every
    per-user draw and leaves everyone else's draws unchanged. u is sampled at step 0 of round 1 only.
    """

    def __init__(self, round_: int, with_u: SiloData, u_present: bool) -> None:
        super().__init__("seeded")
        self.round, self.n, self.u_present, self.calls, self.sampling_calls = round_, with_u.n_users, u_present, 0, 0
        self.n_interactions = len(with_u.train[0])

    def _stream(self) -> torch.Generator:
        self.calls += 1
        return torch.Generator().manual_seed(1000 * self.round + self.calls)

    def uniform(self, n: int) -> torch.Tensor:
        sampling = n in (self.n, self.n - 1)  # else the keys that cap each user's history, one per interaction
        draw = torch.rand(self.n if sampling else self.n_interactions, generator=self._stream())
        if sampling:  # u in only at round 1's first step
            draw[-1] = 0.0 if (self.round == 1 and self.sampling_calls == 0) else 0.999
            self.sampling_calls += 1
        return draw[:n]

    def normal(self, shape: tuple[int, ...] | torch.Size, std: float) -> torch.Tensor:
        return std * torch.randn(shape, generator=self._stream())


def _without_last_user(silo: SiloData) -> SiloData:
    u = silo.n_users - 1

    def drop(part: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = part[0] != u
        return part[0][keep], part[1][keep], part[2][keep]

    return SiloData(region=silo.region, n_users=u, n_items=silo.n_items, explicit=silo.explicit,
                    train=drop(silo.train), valid=drop(silo.valid), test=drop(silo.test))


def _user_major(silo: SiloData) -> SiloData:
    order = np.argsort(silo.train[0], kind="stable")
    return SiloData(region=silo.region, n_users=silo.n_users, n_items=silo.n_items, explicit=silo.explicit,
                    train=tuple(a[order] for a in silo.train), valid=silo.valid, test=silo.test)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", [ModelSpec("mf", 6, {"private_item_bias": False}), ModelSpec("mf", 6),
                                  ModelSpec("twotower", 6, {"hidden": 16})], ids=["mf", "mf+private-bias", "twotower"])
def test_a_user_seen_once_leaves_no_trace_in_other_users_state_or_later_releases(world, spec: ModelSpec) -> None:
    # D and D-u (u = the last user) with identical noise; one DP step per round, u sampled only at step 0.
    # Step 0's releases differ (u's clipped gradient is in D's); the coordinator then sends D's release to
    # both, and everything the silo derived from that step's mechanism outputs (shared silo-wide tensors and
    # their optimizer moments) is set equal too. From then on D and D-u must release bit-identical updates:
    # no other user's hidden state (embedding, Adam moments) may depend on u.
    d = _user_major(world.silos["eu"])
    du = _without_last_user(d)
    assert d.n_users == du.n_users + 1 and len(d.train[0]) != d.n_users
    dp = DpTrainConfig(clip_norm=1.0, noise_multiplier=0.5, sample_rate=0.3, steps_per_round=1, max_per_user=8)
    cfg = TrainConfig(n_negatives=8, lr=0.05)
    g = initial_global_arrays(spec, n_items=d.n_items, seed=0)
    start = local_state(assemble_model(spec, d, g, None, seed=0))
    local = {"D": start, "Du": {k: v[:-1] if k in PER_USER_KEYS else v.clone() for k, v in start.items()}}
    opt: dict[str, dict | None] = {"D": None, "Du": None}
    released: list[dict[str, dict[str, np.ndarray]]] = []
    for rnd in (1, 2, 3, 4):
        outs = {}
        for name, silo in (("D", d), ("Du", du)):
            outs[name] = train_round_dp(silo, spec, g, local[name], cfg, dp, seed=7, optimizer_state=opt[name],
                                        noise=_AlignedNoise(rnd, d, name == "D"))
        released.append({n: o.global_after for n, o in outs.items()})
        for name, o in outs.items():
            local[name], opt[name] = o.local_after, o.optimizer_after
        # every other user's own rows and moments are unaffected by u, at every round
        for k in PER_USER_KEYS:
            if k in local["D"]:
                assert torch.equal(local["D"][k][:-1], local["Du"][k]), (rnd, k)
        # force the mechanism's outputs equal: the global release and the silo-wide (shared) tensors
        g = outs["D"].global_after
        local["Du"] = {k: v if k in PER_USER_KEYS else local["D"][k].clone() for k, v in local["Du"].items()}
        opt["Du"] = {k: (v if k.startswith("l.") else opt["D"][k].copy()) for k, v in opt["Du"].items()}  # type: ignore[union-attr]
    first = released[0]
    assert not np.array_equal(first["D"]["item_emb.weight"], first["Du"]["item_emb.weight"])  # u mattered once
    for later in released[1:]:
        for k in later["D"]:
            np.testing.assert_array_equal(later["D"][k], later["Du"][k])


# ---- 7. what a silo says when it fails ---------------------------------------------------------------------


def test_an_error_reply_carries_a_fixed_code_the_details_stay_in_the_silo_and_the_ledger_records_it(
        world, tmp_path) -> None:
    # Round 1 at dim 8 leaves per-user state [n_users, 8]; the coordinator then "resumes" with dim 16: the
    # shape mismatch names the silo's exact user count in its message.
    node = deployed(world, tmp_path)
    cfg = run_config(world, tmp_path, **{"run-name": "probe"})
    assert "declined" not in meta(train(ctx(node, cfg), world))
    reply = train(ctx(node, {**cfg, "dim": 16}), world, rnd=2, dim=16)
    n_users = world.silos["eu"].n_users
    assert reply.has_error() and reply.error.reason == INTERNAL_REASON
    assert str(n_users) not in reply.error.reason
    assert str(n_users) in (tmp_path / "eu-own-state" / ERRORS_FILE).read_text()  # kept in the silo
    entries = EgressLedger(tmp_path / "eu-own-state" / EGRESS_LEDGER).entries()
    assert [(e.kind, e.server_round) for e in entries] == [("train", 1), ("train:error", 2)]
    assert verify(tmp_path / "eu-own-state" / EGRESS_LEDGER).ok


def test_a_non_private_run_keeps_flowers_error_for_the_researcher(world, tmp_path) -> None:
    node = deployed(world, tmp_path, budget=None)
    cfg = run_config(world, tmp_path, privacy="none", **{"run-name": "plain"})
    train(ctx(node, cfg), world)
    with pytest.raises(RuntimeError):
        train(ctx(node, {**cfg, "dim": 16}), world, rnd=2, dim=16)


# ---- 9. smaller leaks --------------------------------------------------------------------------------------


def test_dp_steps_count_this_run_only(world, tmp_path) -> None:
    node = deployed(world, tmp_path)
    train(ctx(node, run_config(world, tmp_path), run_id=1), world)
    train(ctx(node, run_config(world, tmp_path), run_id=1), world, rnd=2)
    other_run = train(ctx(node, run_config(world, tmp_path), run_id=2), world)
    steps = DP_RUN["privacy-steps-per-round"]
    assert meta(other_run)["dp-steps"] == steps  # not 3 x steps: what it released elsewhere is its own business
    assert meta(other_run)["dp-release-steps"] == steps


def test_a_silo_file_holding_pickled_objects_is_refused_not_executed(tmp_path) -> None:
    path = tmp_path / "silo.npz"
    with open(path, "wb") as f:
        np.savez(f, meta=np.array([1, 1, 0, 0, 0]), region=np.array([{"not": "an array"}], dtype=object))
    with pytest.raises(DataError, match="cannot read silo data"):
        SiloData.load(path)


def test_a_replayed_training_message_does_not_move_a_fork(world, tmp_path) -> None:
    # A region serving its own fork (and not contributing) trains the fork once per training message; the
    # coordinator replaying round 2 must not move what the region serves.
    from fedrec.config import AdoptionPolicy
    from fedrec.silo.serving import RegionServing

    node = deployed(world, tmp_path, budget=None, fork=1, contribute=False)
    cfg = run_config(world, tmp_path, privacy="none")
    assert "declined" not in meta(train(ctx(node, cfg), world, rnd=1))  # the fork starts from round 1's version
    for _ in range(3):
        assert "declined" in meta(train(ctx(node, cfg), world, rnd=2))
    fork = RegionServing(tmp_path / "eu-own-state", AdoptionPolicy.from_config("eu", {"fork": 1})).fork()
    assert fork is not None and fork.rounds == 1 and fork.last_trained == "1/2"


# ---- 8. secure aggregation the jurisdiction requires ---------------------------------------------------------


def test_a_jurisdiction_that_requires_secure_aggregation_sends_nothing_in_the_clear(world, tmp_path) -> None:
    node = deployed(world, tmp_path, **{"require-secure-aggregation": True})
    reply = train(ctx(node, run_config(world, tmp_path)), world)
    assert "requires secure aggregation" in meta(reply)["declined"] and "arrays" not in reply.content
    # a plain message that claims to be SecAgg+'s (the silo-internal marker, forged) is refused outright
    forged = instruction(MessageType.TRAIN, initial_global_arrays(ModelSpec("mf", 8), n_items=world.n_items, seed=0),
                         2)
    forged.content.config_records["config"][AGGREGATION_KEY] = "secaggplus:forged"
    refused = make_client_app()(forged, ctx(node, run_config(world, tmp_path)))
    assert refused.has_error() and refused.error.reason == INTERNAL_REASON
    assert not (tmp_path / "eu-own-state" / PRIVACY_LEDGER_FILE).exists()  # nothing was trained or spent


# ---- a later review: crafted models, failures that were free, a budget the run chose ------------------------------


@pytest.mark.parametrize("poison", ["inf", "huge", "shape"])
def test_a_crafted_global_model_is_refused_whoever_is_in_the_silo(world, tmp_path, poison: str) -> None:
    # +inf (or a huge finite value) on one item's bias overflowed only for users who had that item, so whether
    # the release came back finite was a membership test. The silo now refuses such a model outright, on what
    # it received alone; and a user whose gradient is not finite contributes nothing (next test).
    arrays = initial_global_arrays(ModelSpec("mf", 8), n_items=world.n_items, seed=0)
    if poison == "inf":
        arrays["item_bias.weight"][7] = np.inf
    elif poison == "huge":
        arrays["item_bias.weight"][7] = 3e38
    else:
        arrays["item_emb.weight"] = arrays["item_emb.weight"][:, :4]
    node = deployed(world, tmp_path)
    reply = make_client_app()(instruction(MessageType.TRAIN, arrays, 1), ctx(node, run_config(world, tmp_path)))
    assert reply.has_error() and reply.error.reason == FIXED_REASONS[FedrecError]
    assert not (tmp_path / "eu-own-state" / PRIVACY_LEDGER_FILE).exists()  # refused before anything was spent
    ev = make_client_app()(instruction(MessageType.EVALUATE, arrays, 1), ctx(node, run_config(world, tmp_path)))
    assert ev.has_error() and ev.error.reason == FIXED_REASONS[FedrecError]


@pytest.mark.parametrize("spec", [ModelSpec("mf", 6), ModelSpec("twotower", 6, {"hidden": 16})], ids=["mf", "twotower"])
def test_a_user_whose_gradient_overflows_contributes_nothing(world, spec: ModelSpec) -> None:
    # Below the silo's input check, in the mechanism itself: item 3's parameters make the logits overflow (to
    # inf, then NaN) for the users who have item 3 and for no one else. One DP step over every user must then
    # release exactly what the same step releases over the users without item 3 (same noise): finite, and no
    # trace of who has it.
    from fedrec.privacy.dp_mf import UserBatch, dp_mf_step
    from fedrec.privacy.dp_twotower import dp_twotower_step, shared_parameters
    from fedrec.privacy.sampling import CappedHistories, poisson_user_batch

    silo = world.silos["eu"]
    g = initial_global_arrays(spec, n_items=silo.n_items, seed=0)
    if spec.name == "mf":  # finite parameters whose sum overflows: global bias + item 3's bias
        g["global_bias"][:] = 3e38
        g["item_bias.weight"][3] = 3e38
    else:  # through the item tower
        g["item_emb.weight"][3] = 3e38
    h = CappedHistories.build(silo.train[0], silo.train[1], n_users=silo.n_users, max_per_user=8,
                              keys=np.random.default_rng(0).random(len(silo.train[0])))
    full = poisson_user_batch(h, sample_rate=1.0, noise=NoiseSource("seeded", seed=0))
    has_3 = torch.zeros(len(full.users), dtype=torch.bool).index_fill_(0, full.owner[full.items == 3], True)
    assert 0 < int(has_3.sum()) < len(full.users)
    keep = ~has_3
    row = torch.cumsum(keep.long(), 0) - 1
    mine = keep[full.owner]
    without = UserBatch(users=full.users[keep], owner=row[full.owner[mine]], items=full.items[mine])
    negatives = torch.arange(8, 16)  # shared negatives without item 3
    released = []
    for batch in (full, without):
        model = assemble_model(spec, silo, g, None, seed=0)
        per_user = [p for n, p in model.named_parameters() if n in PER_USER_KEYS]
        shared = [p for n, p in model.named_parameters() if n not in PER_USER_KEYS]
        if spec.name == "mf":
            dp_mf_step(model, batch, negatives, clip_norm=1.0, noise_multiplier=0.5,  # type: ignore[arg-type]
                       global_optimizer=torch.optim.SGD(shared, lr=0.1),
                       local_optimizer=torch.optim.SGD(per_user, lr=0.1), noise=NoiseSource("seeded", seed=9))
        else:
            dp_twotower_step(model, batch, negatives, clip_norm=1.0, noise_multiplier=0.5,  # type: ignore[arg-type]
                             shared_optimizer=torch.optim.SGD(list(shared_parameters(model).values()), lr=0.1),  # type: ignore[arg-type]
                             per_user_optimizer=torch.optim.SGD([model.user.emb.weight], lr=0.1),  # type: ignore[union-attr]
                             noise=NoiseSource("seeded", seed=9))
        released.append({k: v.detach().clone() for k, v in model.named_parameters() if not k.startswith("user.")})
    for name, value in released[0].items():
        finite = torch.isfinite(value) | ~torch.isfinite(released[1][name])  # row 3 itself stays as it came
        assert finite.all(), name
        torch.testing.assert_close(value, released[1][name], rtol=1e-5, atol=1e-6, equal_nan=True)


def test_a_round_that_fails_after_it_started_is_spent_not_free(world, tmp_path, monkeypatch) -> None:
    # Failures used to be free (the ledger recorded a release only after training): a coordinator could probe
    # with configs that make training fail for some silo sizes and not others. The spend is now on record
    # before any private computation, and the round is not trained again.
    from fedrec.silo import private_round as private_silo

    def boom(*_: object, **__: object) -> None:
        raise MemoryError("out of memory in the middle of a DP round")

    node, cfg = deployed(world, tmp_path), run_config(world, tmp_path)
    with monkeypatch.context() as m:
        m.setattr(private_silo, "train_round_dp", boom)
        failed = train(ctx(node, cfg), world)
    assert failed.has_error() and failed.error.reason == INTERNAL_REASON
    releases = json.loads((tmp_path / "eu-own-state" / PRIVACY_LEDGER_FILE).read_text())["releases"]
    assert [r["server_round"] for r in releases] == [1]
    assert "already released" in meta(train(ctx(node, cfg), world))["declined"]


def test_a_deployed_silo_without_its_own_budget_takes_none_from_the_run(world, tmp_path) -> None:
    # A node that sets only max-delta (so it requires DP) used to accept whatever ε the run proposed.
    node = deployed(world, tmp_path, budget=None, **{"max-delta": 1e-6})
    reply = train(ctx(node, run_config(world, tmp_path, **{"privacy-epsilon": 30.0})), world)
    assert "sets no epsilon-budget" in meta(reply)["declined"] and "arrays" not in reply.content


def test_a_run_name_of_dots_is_refused(world, tmp_path) -> None:
    reply = train(ctx(deployed(world, tmp_path), run_config(world, tmp_path, **{"run-name": ".."})), world)
    assert reply.has_error() and reply.error.reason == FIXED_REASONS[ConfigError]
    assert not (tmp_path / "eu-own-state" / "last_reply.json").exists()
