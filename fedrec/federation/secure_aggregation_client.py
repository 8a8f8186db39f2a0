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
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedrec.federation.egress import WEIGHT_KEY
from fedrec.federation.secure_aggregation import CLIP_KEY, NAMES_KEY

CallNext = Callable[[Message, Context], Message]


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
    msg.content = RecordDict({"arrays": arrays, "config": ConfigRecord(config)})  # type: ignore[arg-type]

    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    rc = reply.content
    if "arrays" in rc.array_records:
        out = rc.array_records.pop("arrays")
        ordered = [out[n].numpy() for n in names]
        worst = max(float(np.abs(a).max()) for a in ordered if a.size)
        if worst > clip:
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


def optional_secaggplus_mod(msg: Message, ctxt: Context, call_next: CallNext) -> Message:
    """Run SecAgg+'s client protocol only when the coordinator speaks it (a `secaggplus_configs` record)."""
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)

    def inner(m: Message, c: Context) -> Message:
        return legacy_bridge(m, c, call_next)

    return secaggplus_mod(msg, ctxt, inner)
