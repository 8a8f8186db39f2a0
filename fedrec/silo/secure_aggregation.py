"""The silo's side of optional SecAgg+: Flower's `secaggplus_mod` in front of fedrec's unchanged train handler.

`secaggplus_mod` answers the protocol's stages itself and calls the handler only for the masked-vector
stage, reading the reply in Flower's legacy layout (`fitres.*`, positional arrays). `legacy_bridge` sits
between the two and translates both ways, so the handler still receives `{"arrays", "config"}` and
replies `{"arrays", "metrics": {"weight"}, "meta"}` built by `egress`. The mod does nothing unless the
coordinator speaks SecAgg+, so one ClientApp serves plain and secure runs.

The arrays leave masked; the reply's public metadata (region, round, weight, DP report) travels in the
clear next to them. A decline (no arrays) contributes exact zeros with weight 0. A value outside the
agreed clipping range would be clipped silently by SecAgg+, so the silo refuses (the node drops out of
that round) rather than send a corrupted update.

The coordinator runs the protocol, so the silo checks what it can on its own side:
- the bridge tells the handler which session the update is for (`AGGREGATION_KEY`: `secaggplus:<hash of
  this node's session key>`), so a reply is never re-sent in the clear or re-masked for another session
  (two sessions over different participant sets would isolate one silo's update by differencing);
- `min_contributors` (the larger of the run's and the jurisdiction's): the silo masks its update only when
  at least that many neighbours shared keys with it, and reveals unmasking shares only when at least that
  many are active (distinct nodes; an unmask request naming a node both active and dead, or this node as
  dead, is refused: it would reveal both of a node's secrets). SecAgg+ shows a silo its neighbours, not
  every participant, and cannot tell a real neighbour from one the coordinator made up (Sybils): this
  raises the bar, it does not prove a crowd.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage

from fedrec.errors import FedrecError
from fedrec.messages import CLIP_KEY, NAMES_KEY, WEIGHT_KEY

CallNext = Callable[[Message, Context], Message]
AGGREGATION_KEY = "fedrec-aggregation"
"""Set by the bridge in the handler's config: how the reply will leave (absent: in the clear)."""
PLAIN = "plain"


class TooFewContributors(FedrecError):
    """The silo refuses a SecAgg+ stage: too few contributors for its policy, or an inconsistent request.

    It masks (or helps unmask) an update only among enough distinct contributors, and never answers an unmask
    request that would reveal both of a node's secrets.
    """


def aggregation_of(config: ConfigRecord) -> str:
    """How a training reply will leave the silo: `plain`, or `secaggplus:<session>`."""
    return str(config.get(AGGREGATION_KEY, PLAIN))


def _session(ctxt: Context) -> str:
    """This node's SecAgg+ session: a hash of the public key it generated at the session's setup stage."""
    state = ctxt.state.config_records.get(RECORD_KEY_STATE)
    pk1 = state.get("pk1", b"") if state is not None else b""
    return hashlib.sha256(pk1 if isinstance(pk1, bytes) else b"").hexdigest()[:16]


def legacy_bridge(msg: Message, ctxt: Context, call_next: CallNext) -> Message:
    """`fitins.*` → `{"arrays", "config"}` for the handler; its reply → `fitres.*` for `secaggplus_mod`."""
    content = msg.content
    if "fitins.parameters" not in content.array_records:
        return call_next(msg, ctxt)
    config = dict(content.config_records["fitins.config"])
    names = str(config.pop(NAMES_KEY)).split("\n")
    clip = float(config.pop(CLIP_KEY))  # type: ignore[arg-type]
    received = list(content.array_records["fitins.parameters"].values())
    arrays = ArrayRecord({n: Array(a.numpy()) for n, a in zip(names, received, strict=True)})
    config[AGGREGATION_KEY] = f"secaggplus:{_session(ctxt)}"
    msg.content = RecordDict({"arrays": arrays, "config": ConfigRecord(config)})  # type: ignore[arg-type]

    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    rc = reply.content
    if "arrays" in rc.array_records:
        out = rc.array_records.pop("arrays")
        ordered = [out[n].numpy() for n in names]
        worst = max(float(np.abs(a).max()) for a in ordered if a.size)
        if not np.isfinite(worst) or worst > clip:  # NaN > clip is False: test finiteness explicitly
            raise ValueError(f"a parameter reaches {worst:.3g}, outside secagg-clipping-range {clip:g}: "
                             "SecAgg+ would clip it silently; raise the range")
        weight = float(rc.metric_records["metrics"][WEIGHT_KEY])  # type: ignore[arg-type]
    else:  # a decline: exact zeros with weight 0 keep the protocol going and add nothing
        ordered = [np.zeros_like(a.numpy()) for a in received]
        weight = 0.0
    rc.array_records["fitres.parameters"] = ArrayRecord({str(i): Array(a) for i, a in enumerate(ordered)})
    rc.metric_records["fitres.num_examples"] = MetricRecord({"num_examples": weight})
    rc.config_records["fitres.metrics"] = ConfigRecord({})
    rc.config_records["fitres.status"] = ConfigRecord({"code": 0, "message": "Success"})
    return reply


def optional_secaggplus_mod(min_contributors: Callable[[Context], int]) -> Callable[[Message, Context, CallNext],
                                                                                  Message]:
    """Run SecAgg+'s client protocol only when the coordinator speaks it (a `secaggplus_configs` record).

    `min_contributors(ctxt)`: the fewest contributors among whom this silo masks its update or helps unmask.
    """

    def mod(msg: Message, ctxt: Context, call_next: CallNext) -> Message:
        if RECORD_KEY_CONFIGS not in msg.content.config_records:
            config = msg.content.config_records.get("config") if msg.has_content() else None
            if config is not None and AGGREGATION_KEY in config:
                raise ValueError(f"{AGGREGATION_KEY} is set by the silo's own SecAgg+ bridge, never by the "
                                 "coordinator: a plain message claiming secure aggregation is refused")
            return call_next(msg, ctxt)
        configs = msg.content.config_records[RECORD_KEY_CONFIGS]
        stage, needed = configs.get(Key.STAGE), min_contributors(ctxt)
        if stage == Stage.COLLECT_MASKED_VECTORS:
            srcs = list(configs.get(Key.SOURCE_LIST, []))  # type: ignore[arg-type]
            if len(set(srcs)) != len(srcs):  # a neighbour forwarded twice would count twice
                raise TooFewContributors("a neighbour is listed more than once among the key shares")
            seen = len(srcs) + 1
            if seen < needed:
                raise TooFewContributors(f"only {seen} contributors shared keys with this silo; it masks its "
                                         f"update only among at least {needed}")
        elif stage == Stage.UNMASK:
            active_nids = list(configs.get(Key.ACTIVE_NODE_ID_LIST, []))  # type: ignore[arg-type]
            dead_nids = list(configs.get(Key.DEAD_NODE_ID_LIST, []))  # type: ignore[arg-type]
            if (len(set(active_nids)) != len(active_nids) or len(set(dead_nids)) != len(dead_nids)
                    or set(active_nids) & set(dead_nids) or ctxt.node_id in dead_nids):
                raise TooFewContributors("inconsistent unmask request: a node listed twice, both active and dead, "
                                         "or this node listed as dead would reveal both of a node's secrets")
            active = len(active_nids)
            if active < needed:
                raise TooFewContributors(f"only {active} active contributors; this silo helps unmask only a sum "
                                         f"of at least {needed}")

        def inner(m: Message, c: Context) -> Message:
            return legacy_bridge(m, c, call_next)

        return secaggplus_mod(msg, ctxt, inner)

    return mod
