"""The coordinator's screen for training replies: a malformed or hostile update is rejected, never averaged.

Checked per reply, against the global model the round sent: the same parameter names, shapes and dtypes;
every value finite; a finite, positive weight (exactly 1 under DP); trained on the version this round
sent (a stale reply from an earlier round or run is rejected); one reply per region. Then across the
round's well-formed replies: an update (reply minus the sent global model) whose L2 norm is more than
`norm_factor` times the round's median update norm (with at least 3 replies), or above an absolute
`max_norm`, is rejected. This stops broken or crude attacks (NaN bombs, scaled updates, replays); it is
not a Byzantine-robust aggregator: a hostile silo can still steer the average within those bounds.

A statistics model's round (`model=ease` / `ials`: silos send `stat.*` sums, `ScreenRules.statistics`) is
screened for form only (and what no users' statistics could be, the family's `check`), see
`malformed_statistics`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, RecordDict

from fedrec.messages import WEIGHT_KEY, read_arrays, read_privacy, read_region, read_version

Expected = dict[str, tuple[tuple[int, ...], str]]
"""Array name → (shape, dtype name) a reply must hold."""


@dataclass(frozen=True)
class StatisticsScreen:
    """What a statistics reply must hold: each `stat.*` array's shape and dtype, and the model's own check.

    `check_report`, for a DP release: its arrays against the reply's public DP report (`read_privacy`).
    """

    expected: Expected
    check: Callable[[dict[str, np.ndarray]], str | None]
    check_report: Callable[[dict[str, np.ndarray], dict[str, float] | None], str | None] | None = None


@dataclass(frozen=True)
class ScreenRules:
    """How far an update may stray (run config `update-norm-factor`, `max-update-norm`)."""

    norm_factor: float = 10.0
    max_norm: float = 0.0  # 0: no absolute bound
    uniform_weight: bool = False  # under DP or weighting=uniform every weight must be exactly 1
    statistics: StatisticsScreen | None = None  # a statistics model's round: replies are sums, not updates


def _arrays(content: RecordDict, expected: Expected, *, noun: str, owner: str
            ) -> tuple[dict[str, np.ndarray], str | None]:
    """The reply's arrays and what is wrong with them: names, shapes and dtypes as `expected`, finite values."""
    if "arrays" not in content.array_records:
        return {}, f"no {noun}s in the reply"
    try:
        arrays = read_arrays(content)
    except Exception as exc:  # any undecodable payload is a rejection, not a crash
        return {}, f"{noun}s cannot be decoded ({type(exc).__name__})"
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or extra:
        return arrays, f"{noun} names differ from the {owner} (missing {missing}, unexpected {extra})"
    for name, (shape, dtype) in expected.items():
        got = arrays[name]
        if got.shape != shape or got.dtype != np.dtype(dtype):
            return arrays, f"{name}: {got.dtype}{list(got.shape)} where the {owner} has {dtype}{list(shape)}"
        if got.dtype.kind == "f" and not np.isfinite(got).all():
            return arrays, f"{name}: holds NaN or Inf"
    return arrays, None


def _weight_or_version(content: RecordDict, *, version: str, uniform_weight: bool) -> str | None:
    """What is wrong with a reply's aggregation weight or the version it was computed on."""
    metrics = content.metric_records.get("metrics")
    weight = metrics.get(WEIGHT_KEY) if metrics is not None else None
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not math.isfinite(weight) or weight <= 0:
        return f"aggregation weight {weight!r} is not a finite number > 0"
    if uniform_weight and weight != 1.0:
        return f"aggregation weight {weight!r}: weights are uniform (privacy=user_dp or weighting=uniform), must be 1"
    base = read_version(content, record="meta")
    if version and base != version:
        return f"stale: trained on version {base[:12] or '(none)'}, this round sent {version[:12]}"
    return None


def malformed(msg: Message, sent: dict[str, np.ndarray], *, version: str, uniform_weight: bool) -> str | None:
    """Why this reply cannot be aggregated (None when it is well-formed)."""
    expected = {k: (v.shape, v.dtype.name) for k, v in sent.items()}
    _, why = _arrays(msg.content, expected, noun="parameter", owner="global model")
    return why or _weight_or_version(msg.content, version=version, uniform_weight=uniform_weight)


def malformed_statistics(msg: Message, rules: StatisticsScreen, *, version: str) -> str | None:
    """Why a statistics reply cannot be summed (None when it can).

    Checked: the `stat.*` names, shapes and dtypes, finite values, the model's own check of their values
    (EASE: symmetric, whole non-negative counts below 2²⁴, G[i, j] ≤ G[i, i]; what still breaks the
    solve is found there, `fedrec.statistics.solve_replies`), the weight and the version. Not norms: a statistic
    is a sum over the silo's users, so it grows with the silo, and comparing its size with the other silos'
    would reject a large silo for being large. Like the norm bound for updates, this stops broken and crude
    replies, not a silo that sends well-formed statistics of invented users.
    """
    arrays, why = _arrays(msg.content, rules.expected, noun="statistic", owner="model")
    return (why or rules.check(arrays) or _report_problem(msg, arrays, rules)
            or _weight_or_version(msg.content, version=version, uniform_weight=False))


def _report_problem(msg: Message, arrays: dict[str, np.ndarray], rules: StatisticsScreen) -> str | None:
    """What is wrong with a DP release's arrays given its DP report (None without a `check_report`)."""
    if rules.check_report is None:
        return None
    try:
        privacy = read_privacy(msg.content)
    except Exception:  # any unreadable report is a rejection, not a crash
        return "its DP report cannot be read"
    return rules.check_report(arrays, privacy)


def metadata_problem(msg: Message, *, version: str) -> str | None:
    """What is wrong with a reply's public metadata alone (under SecAgg+ its arrays are masked)."""
    metrics = msg.content.metric_records.get("metrics")
    weight = metrics.get(WEIGHT_KEY) if metrics is not None else None
    if weight != 1.0:
        return f"aggregation weight {weight!r} (SecAgg+ here masks weights of exactly 1)"
    base = read_version(msg.content, record="meta")
    if version and base != version:
        return f"stale: trained on version {base[:12] or '(none)'}, this round sent {version[:12]}"
    return None


def update_norm(msg: Message, sent: dict[str, np.ndarray]) -> float:
    """L2 norm of the reply's change to the global model, over every parameter."""
    arrays = read_arrays(msg.content)
    return math.sqrt(sum(float(np.sum((arrays[k].astype(np.float64) - v) ** 2)) for k, v in sent.items()))


def screen(replies: list[Message], sent: dict[str, np.ndarray], *, version: str, rules: ScreenRules
           ) -> tuple[list[Message], dict[str, str]]:
    """(replies to aggregate, {region: reason} for the rejected ones)."""
    rejected: dict[str, str] = {}
    claims = Counter(read_region(m.content) for m in replies)
    for region, n in claims.items():
        if n > 1:
            rejected[region] = f"{n} replies claim this region in one round"
    well_formed = []
    for msg in replies:
        region = read_region(msg.content)
        if region in rejected:
            continue
        why = (malformed_statistics(msg, rules.statistics, version=version) if rules.statistics is not None
               else malformed(msg, sent, version=version, uniform_weight=rules.uniform_weight))
        if why:
            rejected[region] = why
        else:
            well_formed.append(msg)
    if rules.statistics is not None:  # sums over each silo's users: no norm comparison (see malformed_statistics)
        return well_formed, rejected
    sent64 = {k: v.astype(np.float64) for k, v in sent.items()}
    norms = {read_region(m.content): update_norm(m, sent64) for m in well_formed}
    median = float(np.median(list(norms.values()))) if len(norms) >= 3 else math.inf
    for region, norm in norms.items():
        if rules.max_norm and norm > rules.max_norm:
            rejected[region] = f"update norm {norm:.4g} above max-update-norm {rules.max_norm:g}"
        elif median > 0 and norm > rules.norm_factor * median:
            rejected[region] = f"update norm {norm:.4g} is over {rules.norm_factor:g}x the round's median {median:.4g}"
    return [m for m in well_formed if read_region(m.content) not in rejected], rejected
