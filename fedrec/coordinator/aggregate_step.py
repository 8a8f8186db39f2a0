"""One round's aggregate at the coordinator: the screened replies become the line's new global arrays.

A model trained by gradient steps: robust aggregation first (row clipping, nearest-neighbour mixing, and who moved
what: `fedrec.coordinator.robust`), then the strategy's average, kept in the model's own dtypes. A statistics model
(`fedrec.statistics`): the replies' statistics summed unweighted, in region order, in float64, and solved; no
server step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.serverapp.strategy import Strategy

from fedrec.coordinator.robust import attribution, clip_rows, mix_nearest
from fedrec.coordinator.train_step import TrainStep
from fedrec.messages import WEIGHT_KEY, read_arrays, read_float, read_region
from fedrec.models import ModelSpec
from fedrec.settings import RunSettings
from fedrec.statistics import Arrays, StatisticsFamily, solve_replies

Contribution = tuple[dict[str, np.ndarray], dict[str, tuple[dict[str, np.ndarray], float]]]
"""What a round adds to the kept contributions: the arrays sent, and each region's reply and weight."""


@dataclass(frozen=True)
class Averaged:
    """What averaging a round's replies made."""

    arrays: ArrayRecord | None
    """The new global arrays (None: the strategy made none, the line keeps its arrays)."""
    robust: dict[str, Any]
    """What robust aggregation did and who moved what (the round's `robust` record)."""
    contribution: Contribution | None
    """Each region's reply as averaged (after row clipping), when the run keeps contributions."""


def solve_step(family: StatisticsFamily, step: TrainStep, current: Arrays, spec: ModelSpec,
               n_items: int) -> Arrays | None:
    """A statistics model's new global arrays from the screened replies (`solve_replies`).

    Replies whose statistics break the solve, or make a model the silos refuse, are moved from the
    step's contributors to its rejected ones; when none can be kept the round is not aggregated.
    """
    parts = [(read_region(r.content), read_arrays(r.content)) for r in step.to_aggregate]
    solved, left_out = solve_replies(family, parts, current, spec, n_items)
    step.rejected.update(left_out)
    step.to_aggregate = [r for r in step.to_aggregate if read_region(r.content) not in left_out]
    step.contributors = [c for c in step.contributors if c not in left_out]
    return solved


def average_step(strategy: Strategy, s: RunSettings, rnd: int, arrays: ArrayRecord, init: Arrays,
                 replies: list[Message], *, n_items: int, keep_contributions: bool) -> Averaged:
    """The strategy's average of the replies, after robust aggregation, in the dtypes of the model (`init`)."""
    sent = {k: v.numpy() for k, v in arrays.items()}
    robust: dict[str, Any] = {}
    private = s.privacy_settings().enabled  # row clipping is not measured on DP releases: not applied
    if s.robust == "row_clip" and s.secure_aggregation != "secaggplus" and not private:
        clip = clip_rows(sent, replies, n_items=n_items, clip=s.row_clip)
        robust["clipped_rows"] = clip.clipped
    if s.secure_aggregation != "secaggplus":
        robust["top_moved"] = attribution(sent, replies, n_items=n_items)  # nnm: before mixing
    if s.robust == "nnm" and s.secure_aggregation != "secaggplus":
        robust["excluded_by"] = mix_nearest(sent, replies, f=int(s.trim_beta * len(replies)), n_items=n_items)
    contribution: Contribution | None = None
    if keep_contributions:  # what each region's reply adds (after row_clip: what is averaged)
        contribution = (sent, {read_region(m.content): (read_arrays(m.content),
                                                        read_float(m.content, "metrics", WEIGHT_KEY))
                               for m in replies})
    aggregated, _ = strategy.aggregate_train(rnd, replies)
    if aggregated is None:
        return Averaged(None, robust, contribution)
    # in the model's own dtypes: Flower's FedAdam returns float64 arrays
    return Averaged(ArrayRecord({k: Array(np.ascontiguousarray(aggregated[k].numpy().astype(init[k].dtype)))
                                 for k in init}), robust, contribution)
