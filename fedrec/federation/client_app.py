"""Flower ClientApp: one per silo. Thin: translate Message/Context into `silo` function calls.

Per-user parameters live in `context.state` (the node's persistent state) between rounds and are never
put in a reply; the reply content is built by `egress` only.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedrec.data.split import SiloData
from fedrec.federation.egress import evaluate_reply, read_arrays, read_int, train_reply
from fedrec.federation.settings import RunSettings, SiloIdentity
from fedrec.federation.silo import Tensors, evaluate_round, silo_seed, train_round

LOCAL_STATE_KEY = "fedrec-user-state"
OPTIMIZER_STATE_KEY = "fedrec-optimizer-state"


def read_local_state(context: Context) -> Tensors | None:
    """This silo's per-user parameters from its node state (None before its first round)."""
    if LOCAL_STATE_KEY not in context.state.array_records:
        return None
    return {k: torch.as_tensor(v.numpy()) for k, v in context.state.array_records[LOCAL_STATE_KEY].items()}


def write_local_state(context: Context, local: Tensors) -> None:
    """Keep per-user parameters in the node's own state (never in a message)."""
    context.state[LOCAL_STATE_KEY] = ArrayRecord({k: Array(v.numpy()) for k, v in local.items()})


def read_optimizer_state(context: Context) -> dict[str, np.ndarray] | None:
    """The silo's optimizer moments from its node state (None before its first round)."""
    if OPTIMIZER_STATE_KEY not in context.state.array_records:
        return None
    return {k: v.numpy() for k, v in context.state.array_records[OPTIMIZER_STATE_KEY].items()}


def write_optimizer_state(context: Context, state: dict[str, np.ndarray]) -> None:
    """Keep the silo's optimizer moments (derived from private data) in the node's own state."""
    context.state[OPTIMIZER_STATE_KEY] = ArrayRecord({k: Array(v) for k, v in state.items()})


def make_client_app(settings: RunSettings | None = None) -> ClientApp:
    """A ClientApp; with `settings` it ignores `context.run_config` (in-process runs from Python)."""
    app = ClientApp()

    def resolve(context: Context) -> tuple[RunSettings, SiloIdentity, SiloData]:
        s = settings or RunSettings.from_run_config(dict(context.run_config))
        torch.set_num_threads(s.client_threads)
        ident = SiloIdentity.from_node_config(dict(context.node_config), s)
        return s, ident, SiloData.load(ident.data_path)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        s, ident, silo = resolve(context)
        rnd = read_int(msg.content, "config", "server-round")
        arrays = read_arrays(msg.content)
        out = train_round(silo, s.model_spec, arrays, read_local_state(context), s.train_config(),
                          seed=silo_seed(s.seed, ident.region, rnd), optimizer_state=read_optimizer_state(context))
        write_local_state(context, out.local_after)
        write_optimizer_state(context, out.optimizer_after)
        weight = float(out.n_examples) if s.weighting == "examples" else 1.0
        return Message(train_reply(out.global_after, region=ident.region, server_round=rnd, weight=weight),
                       reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        s, ident, silo = resolve(context)
        rnd = read_int(msg.content, "config", "server-round")
        arrays = read_arrays(msg.content)
        ev = evaluate_round(silo, s.model_spec, arrays, read_local_state(context), s.train_config(),
                            seed=silo_seed(s.seed, ident.region, rnd))
        return Message(evaluate_reply(ev, region=ident.region, server_round=rnd), reply_to=msg)

    return app


app = make_client_app()
