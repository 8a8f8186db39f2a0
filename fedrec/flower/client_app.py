"""Flower ClientApp: one per silo. Thin: resolve the silo from Message/Context, hand it to `silo.handlers`.

Per-user parameters live in `context.state` (the node's persistent state) between rounds and are never
put in a reply; the reply content is built by `egress` only. What a silo decides for each message (decline,
re-send, a plain or a DP round, evaluate and review) is in `fedrec.silo.handlers`, Flower-free.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedrec.data.split import SiloData
from fedrec.errors import FedrecError
from fedrec.flower.egress_recorder import Mod
from fedrec.settings import RunSettings
from fedrec.silo.egress_ledger import egress_ledger_mod
from fedrec.silo.error_replies import contain_errors
from fedrec.silo.handlers import Silo, evaluate_message, train_message
from fedrec.silo.policy import NODE_DP_KEYS, SiloIdentity
from fedrec.silo.preflight import preflight_answer, preflight_reply
from fedrec.silo.regime import Regimes
from fedrec.silo.secure_aggregation import optional_secaggplus_mod
from fedrec.silo.state import SiloState


def make_client_app(settings: RunSettings | None = None, *, mods: list[Mod] | None = None,
                    reproducible_noise: bool = False, inner_mods: list[Mod] | None = None,
                    regimes: Regimes | None = None) -> ClientApp:
    """A ClientApp; with `settings` it ignores `context.run_config` (in-process runs from Python).

    `regimes` (simulations: the researcher owns every silo) is each jurisdiction's own policy: a simulated node's
    effective node config is its partition keys plus its region's entry (`Regimes.node_config`), read exactly as
    a deployed node config. It is the silos' own, so it never travels in the run config.

    `reproducible_noise` (in-process research and tests only: no run-config key reaches it) seeds each
    silo's DP noise and sampling from the run's seed instead of the OS CSPRNG, so a run can be replayed
    bit for bit; a silo whose jurisdiction sets its own privacy policy refuses it.

    `mods` wrap every handler (e.g. `egress_recorder`, to keep a copy of everything the silo sends). Around
    them, outermost first: error containment (a failure of the ledger itself still leaves only a fixed code),
    the silo's egress ledger, error containment again (a failure below becomes a fixed-code error reply the
    ledger records); SecAgg+'s client side (active only when the coordinator runs it) is the innermost, so
    `mods` and the ledger see what actually leaves. `inner_mods` (research tooling: a hostile node's own code)
    sit inside SecAgg+'s client side, next to the handlers, so they see and rewrite the plain update before
    it is masked.
    """
    node = _NodeConfig(settings, regimes or Regimes())
    facts = _privacy_facts(node)
    app = ClientApp(mods=[contain_errors(facts), egress_ledger_mod(lambda c: node.identity(c).state_dir),
                          contain_errors(facts), *(mods or []), optional_secaggplus_mod(_min_contributors(node)),
                          *(inner_mods or [])])

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Preflight: the silo checks its own configuration before round 1 (`preflight`)."""
        s = node.settings(context)
        try:
            node_config = node.config(context)
        except FedrecError as exc:  # a regime entry this silo cannot use: the preflight answer names it
            return Message(preflight_answer("?", f"{type(exc).__name__}: {exc}"), reply_to=msg)
        return Message(preflight_reply(s, node_config), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return Message(train_message(_resolve(node, context), msg.content, reproducible_noise), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(evaluate_message(_resolve(node, context), msg.content), reply_to=msg)

    return app


@dataclass(frozen=True)
class _NodeConfig:
    """How a message's silo is resolved.

    The run's proposal (given, or the context's run config) and the node's own config (in a simulation: its
    partition keys plus its regime entry).
    """

    given: RunSettings | None
    regimes: Regimes

    def settings(self, context: Context) -> RunSettings:
        return self.given or RunSettings.from_run_config(dict(context.run_config))

    def config(self, context: Context) -> dict[str, Any]:
        return self.regimes.node_config(dict(context.node_config), self.settings(context))

    def identity(self, context: Context) -> SiloIdentity:
        return SiloIdentity.from_node_config(self.config(context), self.settings(context))


def _privacy_facts(node: _NodeConfig) -> Callable[[Context], tuple[bool, Path | None]]:
    """(replies are private, state dir) of a message's silo; a run config it cannot read counts as private."""

    def facts(context: Context) -> tuple[bool, Path | None]:
        own = context.node_config.get("state-dir") if "region" in context.node_config else None
        fallback = Path(str(own)) if own is not None else None
        try:
            s = node.settings(context)
            own_config = node.config(context)
        except FedrecError:
            return True, fallback
        private = s.privacy_settings().enabled or any(k in own_config for k in NODE_DP_KEYS)
        try:
            return private, node.identity(context).state_dir
        except FedrecError:
            return private, fallback

    return facts


def _min_contributors(node: _NodeConfig) -> Callable[[Context], int]:
    """The fewest SecAgg+ contributors a silo masks among: the run's value or the jurisdiction's, the larger."""
    return lambda c: max(node.settings(c).secagg_min_contributors, node.identity(c).secagg_min_contributors)


def _resolve(node: _NodeConfig, context: Context) -> Silo:
    """The silo a message is for: the run's proposal, the node's policy, its data (cached) and its state."""
    s = node.settings(context)
    torch.set_num_threads(s.client_threads)
    ident = node.identity(context)
    run_key = s.run_key(context.run_id)
    state = SiloState(context, ident.state_dir, run_key, users_from=s.users_from)
    return Silo(s, ident, _load_silo_data(ident.data_path), run_key, state)


def _load_silo_data(path: Path) -> SiloData:
    """The silo's data file, read again only when it changed (a node answers many messages from one file)."""
    try:
        stat = path.stat()
    except OSError:
        return SiloData.load(path)  # raises the DataError that names the file and the fix
    return _cached_silo_data(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _cached_silo_data(path: str, mtime_ns: int, size: int) -> SiloData:
    del mtime_ns, size  # the cache key: a rewritten file is read afresh
    return SiloData.load(Path(path))  # shared by the node's messages: training and evaluation only read it


app = make_client_app()
