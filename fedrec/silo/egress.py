"""The egress contract: the one place that decides what a silo may put in a reply.

Allowed out of a silo (`../shared/design/trust-model.md`):
- global (non-user) parameters — under `privacy=user_dp` only the clipped, noised ones a DP round produced,
  after the silo's ledger recorded the release;
- sufficient statistics (`stat.*` arrays: EASE's XᵀX of the silo's training matrix; iALS's per-item sums of
  its users' factors, Σ w wᵀ and Σ w, with item and user counts) only when the run is not private: they are
  exact sums over the silo's users. Under `privacy=user_dp` only iALS's DP release (`DP_RELEASE`: noised
  sums with a bounded part per user, `fedrec.statistics.dp_ials`), in a reply that carries the silo's DP
  report, after its ledger recorded the release;
- public metadata: region, round, the DP plan (σ, q, C, δ, budget) and ε spent so far, a decline reason;
- the aggregation weight: under DP always 1 (uniform: a silo's example count is private);
- evaluation metric sums and user counts only when the run is not private. Under DP they are a release too,
  so they stay in the silo (its own evaluation log) and the reply says only that evaluation happened.
Never: user ids, per-user parameters, raw interactions, un-noised updates or counts.

Every reply is built here and passes `check_reply` last, an allow-list of record names and keys; anything
else raises `EgressViolation` instead of leaving.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedrec.evaluation import SiloEvaluation
from fedrec.messages import DP_KEYS, EVAL_KEYS, META_KEYS, STAT_PREFIX, TRAIN_LOSS_KEY, WEIGHT_KEY
from fedrec.metrics import METRICS
from fedrec.models.base import is_local
from fedrec.statistics.dp_ials import DP_RELEASE


class EgressViolation(RuntimeError):
    """Something that must not leave a silo was about to be sent."""


def check_reply(content: RecordDict, *, private: bool) -> RecordDict:
    """Return `content` if every record and key in it may leave a silo under this privacy mode, else raise."""
    allowed_records = {"arrays", "metrics", "meta"}
    extra = set(content) - allowed_records
    if extra:
        raise EgressViolation(f"records {sorted(extra)} are not part of the egress contract")
    if "arrays" in content:
        leaking = [k for k in content.array_records["arrays"] if is_local(k)]
        if leaking:
            raise EgressViolation(f"per-user parameters must never leave a silo: {leaking}")
        stats = {k for k in content.array_records["arrays"] if k.startswith(STAT_PREFIX)}
        meta = content.config_records.get("meta")
        if stats and private and (stats != DP_RELEASE or meta is None or not set(DP_KEYS) <= set(meta)):
            raise EgressViolation(f"statistics {sorted(stats)} may not leave a silo under privacy=user_dp: only a DP "
                                  f"release ({sorted(DP_RELEASE)}) with the silo's DP report does")
    if "metrics" in content:
        metrics = content.metric_records["metrics"]
        allowed = {WEIGHT_KEY} if private else {WEIGHT_KEY, TRAIN_LOSS_KEY, *EVAL_KEYS}
        bad = sorted(set(metrics) - allowed)
        if bad:
            raise EgressViolation(f"metrics {bad} may not leave a silo" + (" under privacy=user_dp" if private else ""))
        if private and WEIGHT_KEY in metrics and metrics[WEIGHT_KEY] != 1.0:
            raise EgressViolation("under privacy=user_dp the aggregation weight is uniform (1.0); a silo's "
                                  "example count is private")
    meta = content.config_records.get("meta")
    if meta is None:
        raise EgressViolation("every reply carries its public metadata record 'meta'")
    bad = sorted(set(meta) - META_KEYS)
    if bad:
        raise EgressViolation(f"metadata keys {bad} are not public metadata")
    return content


def _meta(region: str, server_round: int, **extra: Any) -> ConfigRecord:
    return ConfigRecord({"region": region, "server-round": server_round, **extra})


def dp_metadata(privacy: dict[str, float] | None) -> dict[str, float | int]:
    """The public DP fields of a reply, from a silo's privacy report (None when the run is not private)."""
    if privacy is None:
        return {}
    out: dict[str, float | int] = {}
    for key in DP_KEYS:
        name = key.removeprefix("dp-").replace("-", "_")
        out[key] = int(privacy[name]) if name.endswith("steps") else float(privacy[name])
    return out


def train_reply(global_after: dict[str, np.ndarray], *, region: str, server_round: int,
                weight: float, privacy: dict[str, float] | None = None, model_version: str = "",
                loss: float | None = None) -> RecordDict:
    """Reply content of a training round: the new global parameters, the aggregation weight, metadata.

    `privacy` (the silo's report after the ledger recorded the release) marks the update as a DP release;
    `model_version` names the global version it was trained on (public: the coordinator sent it); `loss`
    (the round's mean training loss) travels only in a non-private reply.
    """
    if loss is not None and privacy is not None:
        raise EgressViolation("under privacy=user_dp a training loss is a release: it stays in the silo")
    leaking = [k for k in global_after if is_local(k)]
    if leaking:  # before any tensor is copied into a record
        raise EgressViolation(f"per-user parameters must never leave a silo: {leaking}")
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in global_after.items()})
    content = RecordDict({
        "arrays": arrays,
        "metrics": MetricRecord({WEIGHT_KEY: float(weight),
                                 **({TRAIN_LOSS_KEY: float(loss)} if loss is not None else {})}),
        "meta": _meta(region, server_round, **({"model-version": model_version} if model_version else {}),
                      **dp_metadata(privacy)),
    })
    return check_reply(content, private=privacy is not None)


def statistics_reply(stats: dict[str, np.ndarray], *, region: str, server_round: int,
                     model_version: str = "", privacy: dict[str, float] | None = None) -> RecordDict:
    """Reply content of a statistics round (`fedrec.statistics`): the silo's `stat.*` arrays, weight 1, metadata.

    `privacy` (the silo's report after its ledger recorded the release) marks a DP release; without it the
    run must be non-private (`check_reply` refuses exact statistics under DP). The weight is uniform:
    statistics are summed, never weighted; no training loss (nothing was trained).
    """
    bad = [k for k in stats if not k.startswith(STAT_PREFIX) or is_local(k)]
    if bad:  # before any tensor is copied into a record
        raise EgressViolation(f"a statistics reply holds only {STAT_PREFIX}* arrays, not {bad}")
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in stats.items()}),
        "metrics": MetricRecord({WEIGHT_KEY: 1.0}),
        "meta": _meta(region, server_round, **({"model-version": model_version} if model_version else {}),
                      **dp_metadata(privacy)),
    })
    return check_reply(content, private=privacy is not None)


def decline_reply(*, region: str, server_round: int, reason: str,
                  privacy: dict[str, float] | None = None) -> RecordDict:
    """A silo that will not release this round says why (no parameters, no metrics)."""
    content = RecordDict({"meta": _meta(region, server_round, declined=reason, **dp_metadata(privacy))})
    return check_reply(content, private=True)


def evaluate_reply(ev: SiloEvaluation | None, *, region: str, server_round: int) -> RecordDict:
    """Reply content of an evaluation round.

    Not private: metric sums over the silo's evaluated users and their count (pooled exactly by the
    coordinator). Private (`ev=None`): only that the silo evaluated and kept the result in its own log.
    """
    if ev is None:
        return check_reply(RecordDict({"meta": _meta(region, server_round, **{"kept-in-silo": True})}), private=True)
    metrics: dict[str, int | float | list[int] | list[float]] = {f"sum-{m}": float(ev.sums[m]) for m in METRICS}
    metrics["n-users"] = int(ev.n_users)
    if ev.n_ratings:
        metrics["sq-error"] = float(ev.sq_error)
        metrics["n-ratings"] = int(ev.n_ratings)
    content = RecordDict({"metrics": MetricRecord(metrics), "meta": _meta(region, server_round)})
    return check_reply(content, private=False)
