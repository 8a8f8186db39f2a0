"""The egress contract: the one place that decides what a silo may put in a reply.

Allowed out of a silo: global (non-user) parameters, public metadata (region name, round, model version)
and the metrics/weights the run's privacy setting permits. Never: user ids, per-user parameters, raw
interactions. `train_reply` refuses any parameter name of the local (per-user) side, so a model that
put user state outside its `user` submodule would still be caught by the tests that inspect replies.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedrec.federation.silo import SiloEvaluation
from fedrec.metrics import METRICS
from fedrec.models.base import is_local

WEIGHT_KEY = "weight"


class EgressViolation(RuntimeError):
    """Something that must not leave a silo was about to be sent."""


def train_reply(global_after: dict[str, np.ndarray], *, region: str, server_round: int,
                weight: float) -> RecordDict:
    """Reply content of a training round: the new global parameters, the aggregation weight, metadata."""
    leaking = [k for k in global_after if is_local(k)]
    if leaking:
        raise EgressViolation(f"per-user parameters must never leave a silo: {leaking}")
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in global_after.items()})
    return RecordDict({
        "arrays": arrays,
        "metrics": MetricRecord({WEIGHT_KEY: float(weight)}),
        "meta": ConfigRecord({"region": region, "server-round": server_round}),
    })


def evaluate_reply(ev: SiloEvaluation, *, region: str, server_round: int) -> RecordDict:
    """Reply content of an evaluation round: metric sums over the silo's evaluated users and their count."""
    metrics: dict[str, int | float | list[int] | list[float]] = {f"sum-{m}": float(ev.sums[m]) for m in METRICS}
    metrics["n-users"] = int(ev.n_users)
    if ev.n_ratings:
        metrics["sq-error"] = float(ev.sq_error)
        metrics["n-ratings"] = int(ev.n_ratings)
    return RecordDict({
        "metrics": MetricRecord(metrics),
        "meta": ConfigRecord({"region": region, "server-round": server_round}),
    })


# ---- reading the records back (typed; Flower's records hold a union of value types) ----

def read_arrays(content: RecordDict, key: str = "arrays") -> dict[str, np.ndarray]:
    """The named arrays of a message's ArrayRecord."""
    return {k: v.numpy() for k, v in content.array_records[key].items()}


def _read_number(content: RecordDict, record: str, key: str) -> int | float:
    rec = content.metric_records.get(record) or content.config_records[record]
    value = rec[key]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{record}.{key} should be a number, got {value!r}")
    return value


def read_int(content: RecordDict, record: str, key: str) -> int:
    """An integer from a ConfigRecord or MetricRecord (e.g. the server round, a user count)."""
    return int(_read_number(content, record, key))


def read_float(content: RecordDict, record: str, key: str) -> float:
    """A float from a MetricRecord or ConfigRecord (e.g. a metric sum)."""
    return float(_read_number(content, record, key))


def read_region(content: RecordDict) -> str:
    """The public region name a silo put in its reply's metadata."""
    return str(content.config_records["meta"]["region"])
