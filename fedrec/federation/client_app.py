"""Flower ClientApp: one per silo. Thin: translate Message/Context into `silo` function calls.

Per-user parameters live in `context.state` (the node's persistent state) between rounds and are never
put in a reply; the reply content is built by `egress` only. Under `privacy=user_dp` a round goes through
`private_silo` (ledger first, then release) and evaluation results stay in the silo's own log.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedrec.data.split import SiloData
from fedrec.federation.egress import decline_reply, evaluate_reply, read_arrays, read_int, train_reply
from fedrec.federation.egress_ledger import egress_ledger_mod
from fedrec.federation.egress_recorder import Mod
from fedrec.federation.private_silo import log_evaluation, private_train_round
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


def make_client_app(settings: RunSettings | None = None, *, mods: list[Mod] | None = None) -> ClientApp:
    """A ClientApp; with `settings` it ignores `context.run_config` (in-process runs from Python).

    `mods` wrap every handler (e.g. `egress_recorder`, to keep a copy of everything the silo sends). The
    silo's egress ledger (`egress_ledger`) is always the outermost mod when the silo has a state dir.
    """

    def state_dir_of(context: Context) -> Path | None:
        s = settings or RunSettings.from_run_config(dict(context.run_config))
        return SiloIdentity.from_node_config(dict(context.node_config), s).state_dir

    app = ClientApp(mods=[egress_ledger_mod(state_dir_of), *(mods or [])])

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
        if s.privacy_settings().enabled:
            return Message(private_train(s, ident, silo, context, rnd, arrays), reply_to=msg)
        if ident.epsilon_budget is not None:
            reason = ("this jurisdiction requires user-level DP (node config epsilon-budget) but the run has "
                      "privacy=none: nothing released")
            return Message(decline_reply(region=ident.region, server_round=rnd, reason=reason), reply_to=msg)
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
        if s.privacy_settings().enabled or ident.epsilon_budget is not None:
            log_evaluation(ident, run_id=str(context.run_id), server_round=rnd, ev=ev)
            return Message(evaluate_reply(None, region=ident.region, server_round=rnd), reply_to=msg)
        return Message(evaluate_reply(ev, region=ident.region, server_round=rnd), reply_to=msg)

    return app


def private_train(s: RunSettings, ident: SiloIdentity, silo: SiloData, context: Context, rnd: int,
                  arrays: dict[str, np.ndarray]) -> RecordDict:
    """A user-level DP round: recorded in the silo's ledger before its noised update is put in the reply."""
    out = private_train_round(silo, s, ident, run_id=str(context.run_id), server_round=rnd, global_arrays=arrays,
                              local=read_local_state(context), optimizer_state=read_optimizer_state(context))
    if out.declined is not None:
        return decline_reply(region=ident.region, server_round=rnd, reason=out.declined, privacy=out.report)
    assert out.global_after is not None and out.local_after is not None and out.optimizer_after is not None
    write_local_state(context, out.local_after)
    write_optimizer_state(context, out.optimizer_after)
    return train_reply(out.global_after, region=ident.region, server_round=rnd, weight=1.0, privacy=out.report)


app = make_client_app()
