"""An in-process Flower `Grid` for tests: the real ServerApp and the real ClientApps, no Ray, no threads.

`FakeGrid` implements the abstract `flwr.serverapp.Grid` (`set_run`, `run`, `create_message`,
`get_node_ids`, `push_messages`, `pull_messages`, `send_and_receive`) the way Flower's simulation does it
with `InMemoryGrid` + `InMemoryLinkState` + the Ray backend (flwr/superlink/grid/inmemory_grid.py,
flwr/server/superlink/linkstate/in_memory_linkstate.py, flwr/server/superlink/fleet/vce/vce_api.py),
but synchronously: `push_messages` hands each message to its node's ClientApp at once and keeps the reply
until `pull_messages` collects it.

What it reproduces from Flower's simulation:
- message ids (uuid4) set on push, and the same validity checks on instructions (non-empty id, src node is
  the SuperLink, no reply-to, ttl > 0, not delivered, known run, known destination node) and on replies
  (a reply to that message, from its destination node, to the SuperLink, ttl within the instruction's);
- `delivered_at` set when a message is handed to a node;
- one `Context` per node (run id, node id, node config `partition-id` / `num-partitions`, empty state and
  run config), kept across messages; as with Ray, the ClientApp works on a copy of the message and of the
  context (both are pickled, as Ray pickles them to and from its actors) and the node's context is updated
  only when the ClientApp returns;
- an exception raised out of the ClientApp becomes an error reply with Flower's code
  (`CLIENT_APP_RAISED_EXCEPTION`) and its reason text (`str(type(ex)) + ":<'" + str(ex) + "'>"` of the
  `ClientAppException` wrapping it); replies get a fresh message id as the simulation's worker gives them;
- `TaskIdentity` (what `Message(content, dst_node_id=..., message_type=...)` reads for run id and source
  node) set as the simulation's Python entry point sets it, and put back afterwards.

What it does not: timeouts and TTL expiry in flight (every node answers at once; `timeout` is accepted and
ignored), node heartbeats, dropouts or nodes joining late, concurrency between nodes (nodes run one after
another, in message order), resource limits, separate processes (a mod's in-memory state is shared by all
nodes here, where Ray gives every actor its own copy; a silo's `torch.set_num_threads` applies to this
process), the object store / message (de)serialisation of deployed runs, and SecAgg+
(`run_in_process` raises NotImplementedError for `secure-aggregation=secaggplus`).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException, LoadClientAppError
from flwr.common.constant import NUM_PARTITIONS_KEY, PARTITION_ID_KEY, SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.date import now
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedrec.coordinator.history import FederationHistory
from fedrec.coordinator.round_loop import RoundCallback
from fedrec.flower.client_app import make_client_app
from fedrec.flower.egress_recorder import Mod
from fedrec.flower.server_app import make_server_app
from fedrec.flower.simulation import QUIET_ENV
from fedrec.run_lines import participating_regions
from fedrec.settings import RunSettings, read_manifest
from fedrec.silo.regime import Regimes

log = logging.getLogger(__name__)

SERVER_NODE_ID = 0
"""The ServerApp context's node id in Flower's simulation (`Context(node_id=0, ...)`)."""
Tamper = Callable[[Message, Context], None]
"""A hostile coordinator (or network): rewrites, in place, each instruction as its node receives it (the node's
context tells which silo it is), before any of the silo's code, its egress ledger included, reads it."""


def _copy(obj: Any) -> Any:
    """What the other side receives: Ray pickles messages and contexts to its actors and back."""
    return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def random_node_ids(n: int, seed: int = 0) -> list[int]:
    """`n` distinct node ids that look like Flower's (random unsigned 64-bit), reproducibly."""
    rng = random.Random(f"fakegrid-nodes/{seed}")
    ids: list[int] = []
    while len(ids) < n:
        node_id = rng.getrandbits(64)
        if node_id not in (0, SUPERLINK_NODE_ID, *ids):
            ids.append(node_id)
    return ids


class FakeGrid(Grid):
    """A Grid whose nodes are ClientApps called in this process, one `Context` each, no threads."""

    def __init__(self, client_app: ClientApp, num_nodes: int, *, run_id: int,
                 node_ids: list[int] | None = None, tamper: Tamper | None = None) -> None:
        self.client_app = client_app
        self.tamper = tamper
        self.node_ids = list(node_ids) if node_ids is not None else random_node_ids(num_nodes)
        if len(self.node_ids) != num_nodes or len(set(self.node_ids)) != num_nodes:
            raise ValueError(f"need {num_nodes} distinct node ids, got {self.node_ids}")
        if {0, SUPERLINK_NODE_ID} & set(self.node_ids):
            raise ValueError(f"node ids 0 and {SUPERLINK_NODE_ID} (the SuperLink) are not node ids")
        self._run: Run | None = None
        self.run_id = run_id
        self.contexts: dict[int, Context] = {
            node_id: Context(run_id=run_id, node_id=node_id,
                             node_config={PARTITION_ID_KEY: i, NUM_PARTITIONS_KEY: num_nodes},
                             state=RecordDict(), run_config={})
            for i, node_id in enumerate(self.node_ids)}
        self._pending: dict[str, Message] = {}  # instruction id -> the reply not yet pulled
        self.delivered: list[Message] = []  # every instruction handed to a node, as the node received it
        self.set_run(Run.create_empty(run_id=run_id))

    # --- Grid API -------------------------------------------------------------------------------------

    def set_run(self, run: Run) -> None:
        if not isinstance(run, Run):
            raise TypeError(f"`run` must be an instance of Run, got {type(run).__name__}")
        if run.run_id != self.run_id:
            raise RuntimeError(f"Cannot find the run with ID: {run.run_id}")
        self._run = run

    @property
    def run(self) -> Run:
        assert self._run is not None
        return Run(**vars(self._run))

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        """Deprecated in Flower (use the `Message` constructor); kept because the ABC requires it."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> set[int]:
        return set(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Give every message an id, check it as the SuperLink would, and have its node answer it now."""
        ids: list[str] = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            self._check_instruction(msg)
            self._pending[msg.metadata.message_id] = self._deliver(msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies to `message_ids` not pulled yet (each reply is returned once)."""
        return [self._pending.pop(i) for i in message_ids if i in self._pending]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push, then pull: every node has answered by then (`timeout` is not needed and ignored)."""
        return self.pull_messages(self.push_messages(messages))

    # --- the SuperLink's checks and the SuperNode's work -------------------------------------------------

    def _check_instruction(self, msg: Message) -> None:
        """`InMemoryGrid._check_message` + `InMemoryLinkState.store_message_ins`'s checks.

        Flower logs and drops such a message (its reply never comes); a test wants to know at once.
        """
        md = msg.metadata
        problems = [why for bad, why in [
            (md.message_id == "", "empty message_id"),
            (md.reply_to_message_id != "", "reply_to_message_id is set on an instruction"),
            (md.ttl <= 0, "ttl must be > 0"),
            (md.delivered_at != "", "already delivered"),
            (md.created_at + md.ttl <= now().timestamp(), "ttl has expired"),
            (md.src_node_id != SUPERLINK_NODE_ID, f"src_node_id {md.src_node_id} is not the SuperLink's"),
            (md.run_id != self.run_id, f"run_id {md.run_id} is not this grid's run {self.run_id}"),
            (md.dst_node_id not in self.contexts, f"unknown dst_node_id {md.dst_node_id}"),
            (not md.message_type, "message_type is not set"),
            (msg.has_content() == msg.has_error(), "exactly one of content and error must be set"),
        ] if bad]
        if problems:
            raise ValueError(f"Invalid message ({'; '.join(problems)}): {msg!r}")

    def _deliver(self, msg: Message) -> Message:
        """Run the destination node's ClientApp on (a copy of) `msg`; the reply, or Flower's error reply."""
        node_id = msg.metadata.dst_node_id
        received = _copy(msg)
        received.metadata.delivered_at = now().isoformat()
        self.delivered.append(received)
        context = _copy(self.contexts[node_id])
        if self.tamper is not None:
            self.tamper(received, context)
        try:
            try:
                reply = self.client_app(message=received, context=context)
            except LoadClientAppError:
                raise
            except Exception as ex:
                raise ClientAppException(str(ex)) from ex
            self.contexts[node_id] = context  # only a ClientApp that returned updates the node's context
        except Exception as ex:
            log.error("node %s failed on a %s message:\n%s", node_id, msg.metadata.message_type,
                      traceback.format_exc())
            code = (ErrorCode.CLIENT_APP_RAISED_EXCEPTION if isinstance(ex, ClientAppException)
                    else ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(ex, LoadClientAppError)
                    else ErrorCode.UNKNOWN)
            reply = Message(Error(code=code, reason=str(type(ex)) + ":<'" + str(ex) + "'>"), reply_to=received)
        reply = _copy(reply)
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        self._check_reply(reply, msg)
        return reply

    def _check_reply(self, reply: Message, ins: Message) -> None:
        """`InMemoryLinkState.store_message_res`'s checks (Flower drops such a reply; here it is an error)."""
        md, imd = reply.metadata, ins.metadata
        max_ttl = imd.created_at + imd.ttl - md.created_at
        problems = [why for bad, why in [
            (md.reply_to_message_id != imd.message_id, "does not reply to the message it answers"),
            (md.src_node_id != imd.dst_node_id, f"src_node_id {md.src_node_id} is not {imd.dst_node_id}"),
            (md.dst_node_id != SUPERLINK_NODE_ID, "dst_node_id is not the SuperLink's"),
            (md.run_id != imd.run_id, f"run_id {md.run_id} is not {imd.run_id}"),
            (bool(md.ttl) and md.ttl - max_ttl > 1e-1, f"ttl {md.ttl} exceeds the allowed {max_ttl}"),
            (reply.has_content() == reply.has_error(), "exactly one of content and error must be set"),
        ] if bad]
        if problems:
            raise ValueError(f"Invalid reply ({'; '.join(problems)}): {reply!r}")


@contextmanager
def task_identity(run_id: int) -> Iterator[None]:
    """The ServerApp's identity (what `Message(...)` fills run id and source node from), then the old one."""
    before = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = before


def run_in_process(settings: RunSettings, *, on_round: RoundCallback | None = None,
                   cpus_per_client: float = 1.0, flwr_logs: bool = False, client_mods: list[Mod] | None = None,
                   reproducible_noise: bool = False, run_id: int | None = None,
                   node_ids: list[int] | None = None, ray_address: str | None = None, regimes: Regimes | None = None,
                   tamper: Tamper | None = None) -> FederationHistory:
    """`fedrec.flower.simulation.run_simulation` on a `FakeGrid`: same apps, same outputs, no Ray.

    The real ServerApp (`make_server_app(settings, on_round=...)`, which seeds `random` and calls
    `run_federation`) runs on a FakeGrid whose nodes are `make_client_app(settings, mods=client_mods,
    reproducible_noise=...)`, one per region of the world. `cpus_per_client` and `ray_address` are accepted for the same
    signature and ignored. `run_id` is random like Flower's unless given (silos key their state by it).
    `regimes` goes to the silos' ClientApp as in `run_simulation`; `tamper` makes the coordinator hostile
    (`FakeGrid`: each instruction rewritten as its node receives it).
    """
    if settings.secure_aggregation == "secaggplus":
        raise NotImplementedError("tests/fakegrid.py does not run SecAgg+ (secure-aggregation=secaggplus): "
                                  "use fedrec.flower.simulation.run_simulation")
    del cpus_per_client, ray_address
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    n_regions = len(participating_regions(settings, list(read_manifest(settings.data_dir)["regions"])))
    run_id = random.SystemRandom().getrandbits(64) if run_id is None else run_id
    grid = FakeGrid(make_client_app(settings, mods=client_mods, reproducible_noise=reproducible_noise,
                                    regimes=regimes), n_regions, run_id=run_id, node_ids=node_ids, tamper=tamper)
    server_context = Context(run_id=run_id, node_id=SERVER_NODE_ID, node_config={}, state=RecordDict(),
                             run_config={})
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not flwr_logs:
        flwr_logger.setLevel(logging.ERROR)
    history = FederationHistory()
    try:
        with task_identity(run_id):
            make_server_app(settings, on_round=on_round, history=history)(grid=grid, context=server_context)
    finally:
        flwr_logger.setLevel(level)
    return history
