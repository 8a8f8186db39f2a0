"""The coordinator's update screen on replies built by the silo's own egress code, then tampered with."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord

from fedrec.coordinator.screen import ScreenRules, screen
from fedrec.silo.egress import train_reply
from tests.test_client_egress import instruction

SENT = {"item_emb.weight": np.zeros((6, 3), np.float32), "item_bias.weight": np.zeros((6, 1), np.float32)}
VERSION = "ab" * 32


def reply(region: str, scale: float = 0.1, *, version: str = VERSION, weight: float = 1.0, seed: int = 0,
          arrays: dict[str, np.ndarray] | None = None) -> Message:
    rng = np.random.default_rng(seed)
    update = arrays if arrays is not None else {k: (v + scale * rng.standard_normal(v.shape)).astype(v.dtype)
                                                for k, v in SENT.items()}
    content = train_reply(update, region=region, server_round=1, weight=weight, model_version=version)
    return Message(content, reply_to=instruction(MessageType.TRAIN, SENT, 1))


def regions(msgs: list[Message]) -> list[str]:
    return [str(m.content.config_records["meta"]["region"]) for m in msgs]


def honest() -> list[Message]:
    return [reply(r, seed=i) for i, r in enumerate(("eu", "na", "apac"))]


def test_honest_replies_all_pass() -> None:
    ok, rejected = screen(honest(), SENT, version=VERSION, rules=ScreenRules())
    assert regions(ok) == ["eu", "na", "apac"] and rejected == {}


@pytest.mark.parametrize(("bad", "reason"), [
    (lambda: reply("evil", arrays={**SENT, "item_emb.weight": np.zeros((5, 3), np.float32)}), "float32[5, 3]"),
    (lambda: reply("evil", arrays={**SENT, "item_emb.weight": np.zeros((6, 3), np.float64)}), "float64[6, 3]"),
    (lambda: reply("evil", arrays={"item_emb.weight": SENT["item_emb.weight"]}), "missing ['item_bias.weight']"),
    (lambda: reply("evil", arrays={**SENT, "extra": np.zeros(2, np.float32)}), "unexpected ['extra']"),
    (lambda: reply("evil", arrays={**SENT, "item_bias.weight": np.full((6, 1), np.nan, np.float32)}), "NaN or Inf"),
    (lambda: reply("evil", arrays={**SENT, "item_bias.weight": np.full((6, 1), np.inf, np.float32)}), "NaN or Inf"),
    (lambda: reply("evil", version="cd" * 32), "stale: trained on version cdcdcdcdcdcd"),
    (lambda: reply("evil", weight=-1.0), "weight -1.0"),
    (lambda: reply("evil", scale=100.0), "over 10x the round's median"),
])
def test_a_malformed_or_hostile_update_is_rejected_with_its_reason(bad, reason: str) -> None:
    ok, rejected = screen([*honest(), bad()], SENT, version=VERSION, rules=ScreenRules())
    assert regions(ok) == ["eu", "na", "apac"]
    assert set(rejected) == {"evil"} and reason in rejected["evil"], rejected


def test_a_weight_other_than_one_is_rejected_under_dp_and_a_missing_weight_always() -> None:
    _, rejected = screen([*honest(), reply("evil", weight=250.0)], SENT, version=VERSION,
                          rules=ScreenRules(uniform_weight=True))
    assert "evil" in rejected and "must be 1" in rejected["evil"]
    no_weight = reply("quiet")
    no_weight.content["metrics"] = MetricRecord({})
    _, rejected = screen([*honest(), no_weight], SENT, version=VERSION, rules=ScreenRules())
    assert "not a finite number" in rejected["quiet"]


def test_two_replies_claiming_one_region_are_both_rejected() -> None:
    ok, rejected = screen([*honest(), reply("eu", seed=9)], SENT, version=VERSION, rules=ScreenRules())
    assert regions(ok) == ["na", "apac"] and "2 replies claim" in rejected["eu"]


def test_an_absolute_norm_bound_applies_even_with_few_replies() -> None:
    ok, rejected = screen([reply("eu", scale=0.1), reply("na", scale=5.0)], SENT, version=VERSION,
                          rules=ScreenRules(max_norm=3.0))
    assert regions(ok) == ["eu"] and "above max-update-norm 3" in rejected["na"]


def test_undecodable_arrays_are_a_rejection_not_a_crash() -> None:
    broken = reply("evil")
    rec = broken.content.array_records["arrays"]
    arr = rec["item_emb.weight"]
    rec["item_emb.weight"] = Array(dtype=arr.dtype, shape=arr.shape, stype=arr.stype, data=b"\x00\x01")
    ok, rejected = screen([*honest(), broken], SENT, version=VERSION, rules=ScreenRules())
    assert len(ok) == 3 and "cannot be decoded" in rejected["evil"]
    assert isinstance(broken.content["arrays"], ArrayRecord)
