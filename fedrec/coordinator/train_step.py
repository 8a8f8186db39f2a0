"""One round's training exchange at the coordinator: send, collect, sort out and screen the replies.

Every training message declares the round's members (`round-members`: the regions this round's training messages
go to, as preflight learnt them) and the sent version's identity (`model-identity`), so a silo
whose jurisdiction lists `partners` can refuse a coalition or a lineage its law forbids (`fedrec.silo.coalition`).

Plain replies go through the update screen (`screen.py`; a statistics model's replies are screened for form
only); under SecAgg+ only the mean is visible, so a bad reply voids the round.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid

from fedrec.coordinator.screen import ScreenRules, metadata_problem, screen
from fedrec.coordinator.secure_aggregation import secure_train_round
from fedrec.errors import ConfigError
from fedrec.messages import (
    MODEL_IDENTITY_KEY,
    MODEL_LINEAGE_KEY,
    ROUND_MEMBERS_KEY,
    TRAIN_LOSS_KEY,
    read_decline,
    read_float,
    read_privacy,
    reply_region,
)
from fedrec.settings import RunSettings
from fedrec.versions import ModelVersion


@dataclass
class TrainStep:
    """A round's training replies, sorted out: what to aggregate, from whom, and who declined or was rejected."""

    answered: list[Message]
    to_aggregate: list[Message]
    contributors: list[str]
    declined: dict[str, str]
    rejected: dict[str, str]
    privacy: dict[str, dict[str, float]]
    failures: list[str]
    train_loss: dict[str, float] = field(default_factory=dict)


def collect_train(grid: Grid, strategy: Any, s: RunSettings, rnd: int, arrays: ArrayRecord, config: ConfigRecord,
                  sent: ModelVersion, node_regions: dict[int, str], rules: ScreenRules, timeout: float,
                  context: Context | None, ancestry: Sequence[ModelVersion] = ()) -> TrainStep:
    """Send the round's training messages and screen the replies (plain, or through SecAgg+).

    `sent` is the version the round trains from, `ancestry` its ancestors (parent first, back to the line's root);
    `node_regions` maps node ids to regions, as preflight learnt them.
    """
    version = sent.id
    messages = declare_coalition(list(strategy.configure_train(rnd, arrays, config, grid)), node_regions, sent,
                                 ancestry)
    secure = None
    if s.secure_aggregation == "secaggplus":
        if context is None:
            raise ConfigError("secure-aggregation=secaggplus needs the ServerApp's context")
        secure = secure_train_round(grid, context, messages, timeout=timeout,
                                    clipping_range=s.secagg_clipping_range,
                                    quantization_range=s.secagg_quantization_range,
                                    min_contributors=s.secagg_min_contributors)
        replies, failures = secure.replies, list(secure.failures)
    else:
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        failures = [str(r.error.reason)[:500] for r in replies if r.has_error()]
    answered = sorted((r for r in replies if not r.has_error()), key=reply_region)
    impostors = impostor_replies(answered, node_regions)  # a node answering under another region's name
    answered = [r for r in answered if r.metadata.src_node_id not in impostors]
    declined = {reply_region(r): str(read_decline(r.content)) for r in answered if read_decline(r.content)}
    privacy = {reply_region(r): p for r in answered if (p := read_privacy(r.content)) is not None}
    contributing = [r for r in answered if reply_region(r) not in declined]
    false_names = {node_regions[node]: why for node, why in impostors.items()}
    if secure is None:
        ok, rejected = screen(contributing, {k: v.numpy() for k, v in arrays.items()}, version=version, rules=rules)
        rejected = {**rejected, **false_names}
        losses = {reply_region(r): read_float(r.content, "metrics", TRAIN_LOSS_KEY) for r in ok
                  if TRAIN_LOSS_KEY in r.content.metric_records.get("metrics", {})}
        return TrainStep(answered, ok, [reply_region(r) for r in ok], declined, rejected, privacy, failures, losses)
    # SecAgg+: only the mean is visible; a bad reply cannot be taken out of it, so it voids the round
    rejected = {reply_region(r): why for r in contributing if (why := metadata_problem(r, version=version))}
    rejected |= false_names  # its masked update is in the mean: the round is void
    mean_ok = secure.arrays is not None and all(np.isfinite(a.numpy()).all() for a in secure.arrays.values())
    if secure.arrays is not None and not mean_ok:
        failures.append("SecAgg+ mean holds NaN or Inf: round not aggregated")
    if rejected or not mean_ok:
        return TrainStep(answered, [], [], declined, rejected, privacy, failures)
    return TrainStep(answered, [secure.as_reply()], [reply_region(r) for r in contributing], declined, {}, privacy,
                     failures)


def impostor_replies(replies: list[Message], node_regions: dict[int, str]) -> dict[int, str]:
    """Node id -> why, for each reply whose region is not the one its node answered preflight with.

    A reply is credited to the region its node proved at preflight (regions are distinct there), never to the name
    it signs: a co-silo signing another region's name would otherwise get both replies rejected as duplicates (the
    other region silenced) or its update credited to a region a partners rule allows.
    """
    out = {}
    for r in replies:
        node = r.metadata.src_node_id
        if node in node_regions and reply_region(r) != node_regions[node]:
            out[node] = (f"its reply claims region {reply_region(r)[:40]!r}, but its node answered preflight as "
                         f"{node_regions[node]!r}")
    return out


def declare_coalition(messages: list[Message], node_regions: dict[int, str], sent: ModelVersion,
                      ancestry: Sequence[ModelVersion] = ()) -> list[Message]:
    """Put the round's members, the sent version's identity and its ancestors' in every training message (in place).

    A node preflight did not see is declared as `node-ID` (no silo's partners can allow it).
    """
    members = sorted({node_regions.get(m.metadata.dst_node_id, f"node-{m.metadata.dst_node_id}") for m in messages})
    identity = json.dumps(sent.identity(), sort_keys=True)
    lineage = json.dumps([v.identity() for v in ancestry], sort_keys=True)
    for msg in messages:
        config = msg.content.config_records["config"]
        config[ROUND_MEMBERS_KEY] = list(members)
        config[MODEL_IDENTITY_KEY] = identity
        config[MODEL_LINEAGE_KEY] = lineage
    return messages
