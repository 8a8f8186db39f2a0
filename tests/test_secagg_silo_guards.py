"""A hostile coordinator against a silo's SecAgg+ guards, through the real ClientApp and Flower's real protocol.

The test plays the coordinator and every neighbour of one real silo (`make_client_app`, deployed node config,
its own state dir): it runs Flower's four SecAgg+ stages (setup, share_keys, collect_masked_vectors, unmask)
message by message, and the neighbours' keys, key shares and ciphertexts are made with Flower's own SecAgg+
primitives. Controlling the coordinator and the only neighbour, the test can also unmask the silo's vector
alone (its private-mask seed is Shamir-shared with that neighbour; its pairwise mask is shared with it), which
is exactly the Sybil attack `secagg-min-contributors` raises the bar against, and what lets the tests below
check what a masked reply really contained.

Guards under test (`secure_aggregation_client`, `client_app.train`):
1. a round already answered is answered again only the way it left: never re-masked for a new SecAgg+ session
   (a decline: exact zeros with weight 0), never in the clear;
2. the silo masks its update only among at least `secagg-min-contributors` contributors (the larger of the run
   config's and the node config's), and helps unmask only when at least that many are listed active.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import FitIns, Parameters, bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.flower.client_app import make_client_app
from fedrec.messages import CLIP_KEY, NAMES_KEY
from fedrec.models import ModelSpec
from fedrec.silo.egress_ledger import EGRESS_LEDGER_FILE as EGRESS_LEDGER
from fedrec.silo.egress_ledger import EgressLedger, verify
from fedrec.silo.error_replies import ERRORS_FILE, FIXED_REASONS, INTERNAL_REASON
from fedrec.silo.private_round import PRIVACY_LEDGER_FILE as PRIVACY_LEDGER
from fedrec.silo.state import SiloState
from fedrec.training import initial_global_arrays
from fedrec.world import PreparedWorld, prepare_world
from tests.test_client_egress import INSTRUCTED_VERSION, instruction

WORLD = SyntheticWorldConfig(n_users=150, n_items=40, region_only_items=2, region_sizes=(3.0, 2.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)
PLAIN_RUN = {"privacy": "none", "dim": 8, "num-rounds": 3, "batch-size": 64, "n-negatives": 16, "min-nodes": 2,
             "secure-aggregation": "secaggplus", "secagg-min-contributors": 2}
DP_RUN = {**PLAIN_RUN, "privacy": "user_dp", "privacy-epsilon": 3.0, "privacy-sample-rate": 0.2,
          "privacy-steps-per-round": 1, "privacy-max-per-user": 8}
DECLINING = {"epsilon-budget": 1.0}
"""Node config of a jurisdiction with its own DP budget; in PLAIN_RUN it declines every round without training
(quick), which under SecAgg+ is still a masked contribution, and its errors carry fixed texts: enough to watch
guards that never look at the update."""
SERVER, SILO = 0, 1  # node ids, as in tests.test_client_egress.instruction
# What fedrec's coordinator runs (`secure_train_round`): Flower's default modulus, fedrec's clipping and
# quantization ranges, weights of at most 1.
MOD_RANGE, TARGET_RANGE, CLIP, MAX_WEIGHT = 2**32, 4194304, 8.0, 1.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> PreparedWorld:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world"))


def silo_context(world: PreparedWorld, tmp: Path, run: dict, **node: object) -> Context:
    """A deployed silo (its own data path and state dir); one Context for the whole test, as a SuperNode keeps."""
    node_config = {"region": "eu", "data-path": str(world.data_dir / "silo_eu.npz"),
                   "state-dir": str(tmp / "eu-state"), **node}
    return Context(run_id=1, node_id=SILO, node_config=node_config, state=RecordDict(),
                   run_config={"data-dir": str(world.data_dir), **run})


def global_arrays(world: PreparedWorld) -> dict[str, np.ndarray]:
    return initial_global_arrays(ModelSpec("mf", 8), n_items=world.n_items, seed=0)


class Neighbour:
    """A neighbour the coordinator made up: real SecAgg+ keys, held by the test."""

    def __init__(self, nid: int) -> None:
        self.nid = nid
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        self.sk1, self.pk1 = private_key_to_bytes(sk1), public_key_to_bytes(pk1)
        self.sk2, self.pk2 = private_key_to_bytes(sk2), public_key_to_bytes(pk2)

    def channel(self, other_pk2: bytes) -> bytes:
        """The key encrypting share messages between this neighbour and the owner of `other_pk2` (ECDH)."""
        return generate_shared_key(bytes_to_private_key(self.sk2), bytes_to_public_key(other_pk2))


class Session:
    """One SecAgg+ session (setup → share_keys → collect_masked_vectors → unmask) run by the test as coordinator.

    Messages are built as Flower's `SecAggPlusWorkflow` builds them (fedrec's `secure_train_round` for the
    collect stage's legacy `fitins.*` content) and delivered to the real app with explicit metadata.
    """

    def __init__(self, app: ClientApp, context: Context, n_neighbours: int = 1, server_round: int = 1) -> None:
        self.app, self.context, self.round = app, context, server_round
        self.neighbours = [Neighbour(SILO + 1 + i) for i in range(n_neighbours)]
        self.n = n_neighbours + 1
        self.threshold = 2
        self.silo_pk1 = self.silo_pk2 = b""
        self.silo_shares: dict[int, tuple[bytes, bytes]] = {}  # neighbour -> the silo's (rd_seed, sk1) share
        self.sent = 0

    def deliver(self, content: RecordDict) -> Message:
        self.sent += 1
        metadata = Metadata(run_id=1, message_id=f"secagg-{id(self)}-{self.sent}", src_node_id=SERVER,
                            dst_node_id=SILO, reply_to_message_id="", group_id=str(self.round),
                            created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN)
        return self.app(Message(content=content, metadata=metadata), self.context)

    def stage(self, configs: dict) -> Message:
        return self.deliver(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(configs)}))

    def setup(self) -> Message:
        reply = self.stage({Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: self.n, Key.SHARE_NUMBER: self.n,
                            Key.THRESHOLD: self.threshold, Key.CLIPPING_RANGE: CLIP, Key.TARGET_RANGE: TARGET_RANGE,
                            Key.MOD_RANGE: MOD_RANGE, Key.MAX_WEIGHT: MAX_WEIGHT})
        assert not reply.has_error()
        keys = reply.content.config_records[RECORD_KEY_CONFIGS]
        self.silo_pk1, self.silo_pk2 = bytes(keys[Key.PUBLIC_KEY_1]), bytes(keys[Key.PUBLIC_KEY_2])
        return reply

    def share_keys(self) -> Message:
        keys = {str(SILO): [self.silo_pk1, self.silo_pk2], **{str(nb.nid): [nb.pk1, nb.pk2] for nb in self.neighbours}}
        reply = self.stage({**keys, Key.STAGE: Stage.SHARE_KEYS})
        assert not reply.has_error()
        out = reply.content.config_records[RECORD_KEY_CONFIGS]
        by_nid = {nb.nid: nb for nb in self.neighbours}
        for dst, ciphertext in zip(out[Key.DESTINATION_LIST], out[Key.CIPHERTEXT_LIST], strict=True):
            src, to, rd_share, sk1_share = share_keys_plaintext_separate(
                decrypt(by_nid[dst].channel(self.silo_pk2), ciphertext))
            assert (src, to) == (SILO, dst)
            self.silo_shares[to] = (rd_share, sk1_share)
        return reply

    def collect(self, arrays: dict[str, np.ndarray], sources: list[Neighbour] | None = None) -> Message:
        """The masked-vector stage: the neighbours' key shares for the silo, plus the round's FitIns."""
        sources = self.neighbours if sources is None else sources
        ciphertexts = []
        for nb in sources:  # each neighbour's shares of its own secrets, for the silo's eyes only
            rd_share = create_shares(os.urandom(32), self.threshold, self.n)[0]
            sk1_share = create_shares(nb.sk1, self.threshold, self.n)[0]
            ciphertexts.append(encrypt(nb.channel(self.silo_pk2),
                                       share_keys_plaintext_concat(nb.nid, SILO, rd_share, sk1_share)))
        config = {"server-round": self.round, "model-version": INSTRUCTED_VERSION, NAMES_KEY: "\n".join(arrays),
                  CLIP_KEY: CLIP}
        parameters = Parameters(tensors=[Array(np.asarray(a)).data for a in arrays.values()],
                                tensor_type="numpy.ndarray")
        content = compat.fitins_to_recorddict(FitIns(parameters=parameters, config=config), True)
        content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({
            Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: ciphertexts,
            Key.SOURCE_LIST: [nb.nid for nb in sources]})
        return self.deliver(content)

    def unmask(self, active: list[int] | None = None, dead: list[int] | None = None) -> Message:
        active = [SILO, *(nb.nid for nb in self.neighbours)] if active is None else active
        return self.stage({Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: active,
                           Key.DEAD_NODE_ID_LIST: dead or []})

    def unmask_silo(self, collect_reply: Message, unmask_reply: Message) -> tuple[float, list[np.ndarray]]:
        """The silo's own (weight, parameters), unmasked with what a coordinator controlling its neighbours holds."""
        masked = [bytes_to_ndarray(b) for b in collect_reply.content.config_records[RECORD_KEY_CONFIGS][
            Key.MASKED_PARAMETERS]]
        shapes = [a.shape for a in masked]
        revealed = unmask_reply.content.config_records[RECORD_KEY_CONFIGS]
        own_share = dict(zip(revealed[Key.NODE_ID_LIST], revealed[Key.SHARE_LIST], strict=True))[SILO]
        rd_seed = combine_shares([own_share, *(rd for rd, _ in self.silo_shares.values())])
        vector = parameters_subtraction(masked, pseudo_rand_gen(rd_seed, MOD_RANGE, shapes))
        for nb in self.neighbours:  # the silo (lower id) subtracted each pairwise mask
            pair = generate_shared_key(bytes_to_private_key(nb.sk1), bytes_to_public_key(self.silo_pk1))
            vector = parameters_addition(vector, pseudo_rand_gen(pair, MOD_RANGE, shapes))
        q_ratio, quantized = factor_extract(parameters_mod(vector, MOD_RANGE))
        weighted = dequantize(quantized, CLIP, TARGET_RANGE)  # the parameters times the quantized weight
        weight = float(q_ratio) / TARGET_RANGE * MAX_WEIGHT
        return weight, [w / weight for w in weighted] if weight else weighted


def masked_parameters(reply: Message) -> list[bytes]:
    return list(reply.content.config_records[RECORD_KEY_CONFIGS].get(Key.MASKED_PARAMETERS, []))


def refused(reply: Message) -> bool:
    """An error reply with one of the fixed public texts (the run is private: the why stays in the silo)."""
    return reply.has_error() and reply.error.reason in {INTERNAL_REASON, *FIXED_REASONS.values()}


def meta(reply: Message) -> dict:
    return dict(reply.content.config_records["meta"])


def ledger(tmp: Path) -> list[tuple[str, int, bool]]:
    return [(e.kind, e.server_round, e.declined) for e in EgressLedger(tmp / "eu-state" / EGRESS_LEDGER).entries()]


def honest_session(world: PreparedWorld, app: ClientApp, context: Context) -> tuple[Session, Message, Message]:
    session = Session(app, context)
    session.setup()
    session.share_keys()
    collected = session.collect(global_arrays(world))
    unmasked = session.unmask()
    return session, collected, unmasked


# ---- (a) the honest protocol ------------------------------------------------------------------------------


def test_an_honest_session_sends_only_masked_parameters_and_unmasking_shares(world, tmp_path) -> None:
    # The coordinator runs SecAgg+ as Flower does for round 1 (the test's one neighbour is its own Sybil, which
    # secagg-min-contributors=2 allows): the silo answers every stage, no parameter leaves in the clear.
    app, context = make_client_app(), silo_context(world, tmp_path, PLAIN_RUN)
    session, collected, unmasked = honest_session(world, app, context)

    assert not collected.has_error() and not unmasked.has_error()
    assert "arrays" not in collected.content.array_records
    assert all(len(record) == 0 for record in collected.content.array_records.values())  # fitres.* emptied
    assert len(masked_parameters(collected)) == 1 + len(global_arrays(world))  # weight factor + each tensor
    assert meta(collected)["server-round"] == 1 and "declined" not in meta(collected)
    revealed = unmasked.content.config_records[RECORD_KEY_CONFIGS]
    assert sorted(revealed[Key.NODE_ID_LIST]) == [SILO, 2] and all(revealed[Key.SHARE_LIST])
    # The reply is cached with the session it left under
    cached = SiloState(context, tmp_path / "eu-state", "1").cached_reply(1, INSTRUCTED_VERSION)
    assert cached is not None and cached[0].startswith("secaggplus:")
    # What was masked is the silo's trained update, weight 1 (up to SecAgg+'s quantization): the coordinator
    # with a Sybil neighbour unmasks it alone, as the protocol's threat model allows
    weight, params = session.unmask_silo(collected, unmasked)
    update = [a.numpy() for a in cached[1].array_records["arrays"].values()]
    assert weight == 1.0
    for got, want, sent in zip(params, update, global_arrays(world).values(), strict=True):
        np.testing.assert_allclose(got, want, atol=2 * 2 * CLIP / TARGET_RANGE)
        assert not np.array_equal(want, sent)  # trained, not an echo
    assert ledger(tmp_path) == [("train:secagg", 1, False), ("train:secagg", 1, False), ("train", 1, False),
                                ("train:secagg", 1, False)]


# ---- (b) and (c) a round answered once is not answered again another way -------------------------------------


def test_a_second_session_for_the_same_round_gets_the_zero_contribution(world, tmp_path) -> None:
    # After round 1's session, the coordinator starts a NEW session (new keys, possibly other participants) for
    # the same round and version, to have the silo's cached update masked a second time: two sums that differ
    # by the participant set would isolate it. The silo must decline; the bridge turns that into zeros, weight 0.
    app, context = make_client_app(), silo_context(world, tmp_path, PLAIN_RUN)
    first, _, _ = honest_session(world, app, context)
    second, collected, unmasked = honest_session(world, app, context)

    assert second.silo_pk1 != first.silo_pk1  # a new session: the silo made new keys
    assert not collected.has_error() and not unmasked.has_error()
    assert "already answered" in meta(collected)["declined"]
    assert collected.content.metric_records["fitres.num_examples"]["num_examples"] == 0.0
    # Observable beyond what the silo says about itself: unmasked with the Sybil neighbour's knowledge, the
    # masked vector is exactly the zero contribution (a re-masked cached update would unmask to weight 1)
    weight, params = second.unmask_silo(collected, unmasked)
    assert weight == 0.0 and all(not p.any() for p in params)
    # The silo's own record: one release for round 1, then a decline
    assert [k for k in ledger(tmp_path) if k[0] == "train"] == [("train", 1, False), ("train", 1, True)]
    assert verify(tmp_path / "eu-state" / EGRESS_LEDGER).ok


def test_a_plain_request_for_a_round_answered_under_secagg_is_declined(world, tmp_path) -> None:
    # After round 1's SecAgg+ session, the coordinator asks for round 1 again in a plain message (no SecAgg+
    # configs) with the same version: re-sending the cached reply would put the update in the clear.
    app, context = make_client_app(), silo_context(world, tmp_path, PLAIN_RUN)
    honest_session(world, app, context)

    reply = app(instruction(MessageType.TRAIN, global_arrays(world), 1), context)

    assert not reply.has_error()
    assert "already answered" in meta(reply)["declined"]
    assert not reply.content.array_records and "arrays" not in reply.content
    assert ledger(tmp_path)[-1] == ("train", 1, True)


# ---- (d) too few contributors -------------------------------------------------------------------------------


@pytest.mark.parametrize("node_min, run_min", [(3, 2), (0, 3)], ids=["jurisdiction-asks-3", "run-asks-3"])
def test_a_silo_does_not_mask_among_fewer_contributors_than_its_policy(world, tmp_path, node_min, run_min) -> None:
    # A private (DP) run; the silo needs 3 contributors (its node config's or the run's minimum, whichever is
    # larger). The coordinator sets up a session with one neighbour and a threshold of 2, which Flower's own
    # checks accept, then asks for the masked update: the silo refuses before training anything.
    run = {**DP_RUN, "secagg-min-contributors": run_min}
    app, context = make_client_app(), silo_context(world, tmp_path, run, **{"secagg-min-contributors": node_min})
    session = Session(app, context, n_neighbours=1)
    session.setup()
    session.share_keys()

    reply = session.collect(global_arrays(world))

    assert refused(reply)
    assert not reply.has_content()
    assert "only 2 contributors shared keys" in (tmp_path / "eu-state" / ERRORS_FILE).read_text()
    assert not (tmp_path / "eu-state" / PRIVACY_LEDGER).exists()  # nothing trained, no budget spent
    assert SiloState(context, tmp_path / "eu-state", "1").cached_reply(1, INSTRUCTED_VERSION) is None
    assert ledger(tmp_path)[-1] == ("train:error", 1, True)


def test_a_silo_does_not_help_unmask_a_sum_of_fewer_contributors_than_its_policy(world, tmp_path) -> None:
    # Three contributors share keys and the silo masks its update; at the unmask stage the coordinator lists
    # only the silo and one neighbour as active (the other "dropped"): Flower's threshold (2) would reveal the
    # shares, the silo's own minimum of 3 refuses.
    app = make_client_app()
    context = silo_context(world, tmp_path, DP_RUN, **{"secagg-min-contributors": 3})
    session = Session(app, context, n_neighbours=2)
    session.setup()
    session.share_keys()
    collected = session.collect(global_arrays(world))
    assert not collected.has_error() and masked_parameters(collected)

    too_few = session.unmask(active=[SILO, 2], dead=[3])

    assert refused(too_few) and not too_few.has_content()
    assert "only 2 active contributors" in (tmp_path / "eu-state" / ERRORS_FILE).read_text()
    assert ledger(tmp_path)[-1] == ("train:error", 1, True)
    # The count decides: the same stage listing all three as active is answered
    answered = session.unmask()
    assert not answered.has_error()
    assert sorted(answered.content.config_records[RECORD_KEY_CONFIGS][Key.NODE_ID_LIST]) == [SILO, 2, 3]


# ---- inconsistent lists from the coordinator ------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["collect", "unmask"])
def test_a_neighbour_listed_twice_does_not_count_twice(world, tmp_path, stage) -> None:
    # The silo needs 3 contributors. At the collect stage the coordinator has one (Sybil) neighbour and
    # forwards two valid ciphertexts from it; at the unmask stage (after an honest collect among three) it
    # lists one neighbour twice as active and the third as dead.
    context = silo_context(world, tmp_path, PLAIN_RUN, **DECLINING, **{"secagg-min-contributors": 3})
    session = Session(make_client_app(), context, n_neighbours=1 if stage == "collect" else 2)
    session.setup()
    session.share_keys()
    first = session.neighbours[0]
    if stage == "collect":
        assert refused(session.collect(global_arrays(world), sources=[first, first]))
    else:
        assert not session.collect(global_arrays(world)).has_error()
        assert refused(session.unmask(active=[SILO, first.nid, first.nid], dead=[3]))


def test_a_node_listed_both_active_and_dead_is_refused(world, tmp_path) -> None:
    # Classic SecAgg consistency attack: listing a node both active and dead asks the silo for that node's
    # private-mask-seed share AND its pairwise-key share, i.e. enough (with other neighbours) to unmask that
    # node's vector alone. Listing the silo itself as dead asks for its own secret key's share.
    context = silo_context(world, tmp_path, PLAIN_RUN, **DECLINING)
    session = Session(make_client_app(), context, n_neighbours=2)
    session.setup()
    session.share_keys()
    assert not session.collect(global_arrays(world)).has_error()
    assert refused(session.unmask(active=[SILO, 2, 3], dead=[SILO, 2, 3]))
