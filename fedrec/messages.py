"""The shapes of what travels between a silo and the coordinator: record keys and typed readers.

Both sides need them, so they sit below both. What a silo may *send* is decided by the allow-list in
`fedrec.silo.egress` (built from these keys); the coordinator only reads replies with the readers here.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Message, RecordDict

from fedrec.metrics import METRICS

PREFLIGHT_ERROR = "preflight-error"
"""A silo's answer to the preflight query when its own configuration is wrong (public: no user data)."""
NAMES_KEY = "secagg-array-names"
"""SecAgg+ carries arrays positionally: the coordinator names them, in order, in the round's config."""
CLIP_KEY = "secagg-clipping-range"
"""Silos refuse to mask values outside this range (SecAgg+ would clip them silently)."""
ROUND_MEMBERS_KEY = "round-members"
"""In a training message's config: the regions the coordinator sends this round's training message to (the round's
declared coalition). A silo whose jurisdiction lists `partners` trains only when every member is one of them."""
MODEL_IDENTITY_KEY = "model-identity"
"""In a training message's config: the JSON of the sent version's identity (`ModelVersion.identity`: parent,
contributors, weights hash, ...), whose SHA-256 is its `model-version` id; a silo with `partners` checks both and
builds on no version a partner it does not allow contributed to."""
COALITION_KEY = "coalition"
"""In a training or evaluation message's config: the coalition line the message belongs to (`federation.
coalitions`; absent in a run of one line). A silo keeps each line's users and releases apart (`run_lines.line_key`)."""
MODEL_LINEAGE_KEY = "model-lineage"
"""In a training message's config: the JSON list of the sent version's ancestors' identities, its parent first, back
to the line's root (the version without a parent). Each hashes to the `parent` the one before names, so a silo with
`partners` checks the whole line it would build on, not only who made the last round of it."""
WEIGHT_KEY = "weight"
TRAIN_LOSS_KEY = "train-loss"
"""A non-private round's mean training loss (never under DP: a loss computed on private data is a release)."""
DP_KEYS = ("dp-epsilon", "dp-delta", "dp-noise-multiplier", "dp-sample-rate", "dp-steps", "dp-release-steps",
           "dp-clip-norm", "dp-budget-epsilon")
"""Public DP metadata a silo attaches to every training reply (and to a decline): ε spent at its δ, the plan
(σ, q, C, steps per release), this run's steps so far and the budget. Every value is public policy or a
count the coordinator already knows; none depends on the silo's data."""
STAT_PREFIX = "stat."
"""Names of the arrays in a sufficient-statistics reply (`fedrec.statistics`, e.g. EASE's `stat.gram` = XᵀX):
exact sums over a silo's users, which `silo/egress.py` lets out only in a non-private run."""
MAX_ABS_RECEIVED = 1e3
"""The largest magnitude a silo accepts in a received global parameter (trained models here stay below ~10).

Public, and checked on the received arrays only: a crafted model with huge or non-finite values could
otherwise overflow inside the silo for some users and not others, and make whether a release is finite a
test of who is in the silo. The coordinator makes no version a silo would refuse (`fedrec.statistics`)."""
META_KEYS = frozenset({"region", "server-round", "model-version", "declined", "kept-in-silo", PREFLIGHT_ERROR,
                       *DP_KEYS})
EVAL_KEYS = frozenset({*(f"sum-{m}" for m in METRICS), "n-users", "sq-error", "n-ratings"})


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


def read_version(content: RecordDict, record: str = "config") -> str:
    """The global model version a message names ("" when none).

    `config`: the coordinator's instruction; `meta`: the version a silo's reply was trained on.
    """
    config = content.config_records.get(record)
    return str(config.get("model-version", "")) if config is not None else ""


def read_members(content: RecordDict) -> list[str] | None:
    """The round's declared members a training message names (None when it declares none)."""
    config = content.config_records.get("config")
    value = config.get(ROUND_MEMBERS_KEY) if config is not None else None
    if value is None:
        return None
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def read_coalition(content: RecordDict) -> str:
    """The coalition line a message names ("" when it names none)."""
    config = content.config_records.get("config")
    value = config.get(COALITION_KEY, "") if config is not None else ""
    return value if isinstance(value, str) else repr(value)


def read_region(content: RecordDict) -> str:
    """The public region name a silo put in its reply's metadata."""
    return str(content.config_records["meta"]["region"])


def reply_region(msg: Message) -> str:
    """`read_region` of a reply message (a sort key for replies)."""
    return read_region(msg.content)


def read_privacy(content: RecordDict) -> dict[str, float] | None:
    """The DP metadata of a reply as a plain dict (None when the silo did not attach any)."""
    meta = content.config_records.get("meta")
    if meta is None or "dp-epsilon" not in meta:
        return None
    return {key.removeprefix("dp-").replace("-", "_"): read_float(content, "meta", key) for key in DP_KEYS}


def read_decline(content: RecordDict) -> str | None:
    """The reason a silo declined to release this round (None when it did not)."""
    meta = content.config_records.get("meta")
    return str(meta["declined"]) if meta is not None and "declined" in meta else None
