"""Optional SecAgg+ (`secure-aggregation="secaggplus"`): the coordinator learns only the silos' mean update.

Flower 1.42 offers SecAgg+ only through its compat API: `SecAggPlusWorkflow(grid, LegacyContext)` driving a
legacy `flwr.server.strategy` strategy, and `secaggplus_mod` expecting the legacy `fitres.*` reply layout.
Rather than fork the app, one train step is run through that workflow and its result fed back into the
coordinator's own loop: `secure_train_round` builds a throw-away LegacyContext around the nodes our
strategy sampled, runs the four SecAgg+ stages (setup, key shares, masked vectors, unmask) and returns the
unmasked weighted mean, which the coordinator hands to its (new-style) strategy as one reply carrying the
total weight: FedAvg / FedAvgM / FedAdam then give what N plain replies would, up to SecAgg+'s
quantization (~1e-6 here). The silo side is `fedrec.silo.secure_aggregation`.

What it protects: the coordinator never sees one silo's update, only the sum (it still sees each silo's
public metadata: region, weight, DP report, decline). What it does not: SecAgg+ is not DP (the silos' own
DP noise is what protects users in the mean); it does not stop a hostile silo from sending a bad update
(the per-silo update screen cannot run on masked vectors; only the mean is checked for being finite); the
masks come from Flower's implementation (numpy RandomState seeded from the shared keys: research grade).
Silos that decline contribute exact zeros with weight 0; unmasking is refused when fewer than
`secagg-min-contributors` silos contributed, so a lone contributor among decliners is never revealed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, FitRes, Parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.server import LegacyContext, ServerConfig, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.serverapp import Grid

from fedrec.messages import CLIP_KEY, NAMES_KEY, WEIGHT_KEY


class _RecordingGrid:
    """The real Grid, keeping every reply (the workflow returns none of them)."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.replies: list[Message] = []

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.replies.extend(replies)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class _CaptureStrategy(LegacyFedAvg):
    """A legacy strategy with our sample; `aggregate_fit` receives the already unmasked mean."""

    def __init__(self, fit_ins: list[tuple[ClientProxy, FitIns]]) -> None:
        super().__init__(fraction_evaluate=0.0)
        self._fit_ins = fit_ins
        self.results: list[tuple[ClientProxy, FitRes]] = []
        self.failures: list[Any] = []
        self.aggregated: Parameters | None = None

    def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def,override]
        return self._fit_ins

    def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def,override]
        self.results, self.failures = list(results), list(failures)
        if results:  # the workflow puts the same unmasked mean into every FitRes
            self.aggregated = results[0][1].parameters
        return self.aggregated, {}


class GuardedSecAggPlusWorkflow(SecAggPlusWorkflow):
    """SecAgg+ that refuses to unmask when fewer than `min_contributors` silos sent a non-zero weight."""

    def __init__(self, *args: Any, min_contributors: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_contributors = min_contributors

    def collect_masked_vectors_stage(self, grid, context, state):  # type: ignore[no-untyped-def]
        if not super().collect_masked_vectors_stage(grid, context, state):
            return False
        contributors = sum(1 for _, fitres in state.legacy_results if fitres.num_examples > 0)
        return bool(contributors >= self.min_contributors)


@dataclass
class SecureRound:
    """One SecAgg+ train step: the mean (None when the protocol halted), total weight, the silos' replies."""

    arrays: ArrayRecord | None
    total_weight: float
    replies: list[Message] = field(default_factory=list)  # stage-3 replies: public metadata, masked arrays
    failures: list[str] = field(default_factory=list)

    def as_reply(self) -> Message:
        """One synthetic reply, so the coordinator's strategy aggregates the mean with the total weight."""
        assert self.arrays is not None
        return Message(RecordDict({"arrays": self.arrays, "metrics": MetricRecord({WEIGHT_KEY: self.total_weight})}),
                       dst_node_id=0, message_type=MessageType.TRAIN)


def secure_train_round(grid: Grid, context: Context, train_msgs: list[Message], *, timeout: float,
                       clipping_range: float, quantization_range: int, min_contributors: int) -> SecureRound:
    """Run one SecAgg+ train step for the nodes and content of `train_msgs` (our strategy's sample)."""
    content = train_msgs[0].content
    arrays = content.array_records["arrays"]
    names = list(arrays.keys())
    dtypes = {k: v.numpy().dtype for k, v in arrays.items()}
    config: dict[str, Any] = dict(content.config_records["config"])
    config[NAMES_KEY] = "\n".join(names)
    config[CLIP_KEY] = float(clipping_range)
    fit_ins = FitIns(parameters=Parameters(tensors=[a.data for a in arrays.values()], tensor_type="numpy.ndarray"),
                     config=config)
    proxies = [GridClientProxy(m.metadata.dst_node_id, grid, context.run_id) for m in train_msgs]
    manager = SimpleClientManager()
    for proxy in proxies:
        manager.register(proxy)
    strategy = _CaptureStrategy([(p, fit_ins) for p in proxies])
    scratch = Context(run_id=context.run_id, node_id=context.node_id, node_config=dict(context.node_config),
                      state=RecordDict(), run_config=dict(context.run_config))
    legacy = LegacyContext(scratch, config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=manager)
    legacy.state.config_records["config"] = ConfigRecord({"current_round": int(config["server-round"])})
    legacy.state.array_records["parameters"] = arrays
    workflow = GuardedSecAggPlusWorkflow(
        num_shares=1.0, reconstruction_threshold=0.5, max_weight=1.0, clipping_range=clipping_range,
        quantization_range=quantization_range, timeout=timeout, min_contributors=min_contributors)
    recording = _RecordingGrid(grid)
    workflow(recording, legacy)  # type: ignore[arg-type]
    stage3 = [r for r in recording.replies if not r.has_error()
              and Key.MASKED_PARAMETERS in r.content.config_records.get(RECORD_KEY_CONFIGS, {})]
    failures = [str(r.error.reason)[:500] for r in recording.replies if r.has_error()]
    total = float(sum(res.num_examples for _, res in strategy.results))
    if strategy.aggregated is None:
        return SecureRound(None, total, stage3, failures or ["SecAgg+ halted (too few contributors or dropouts)"])
    mean = parameters_to_ndarrays(strategy.aggregated)  # float64, in `names` order
    out = ArrayRecord({n: Array(np.asarray(v).astype(dtypes[n])) for n, v in zip(names, mean, strict=True)})
    return SecureRound(out, total, stage3, failures)
