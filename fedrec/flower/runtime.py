"""One Ray runtime for many simulations: a sweep, a study or a notebook pays Ray's start-up once.

Flower's simulation engine builds a `RayBackend` per run and its `terminate()` shuts Ray down at the end of every
run (flwr 1.42, `flwr/server/superlink/fleet/vce/backend/raybackend.py`), so each run starts Ray again and spawns
new actor processes that import torch and fedrec again. Inside `shared_runtime()` the engine gets a subclass that
keeps Ray and the actor pool alive between runs: the next run with the same client resources reuses the idle
actors (each job carries its own ClientApp, so nothing of one run's apps stays in an actor; silo state lives on
disk, keyed by run). A run that ends with busy actors (a crash) drops the pool, and the next run builds a new one.
Leaving the outermost `shared_runtime()` terminates the actors and shuts Ray down.

`fedrec -m` (Hydra multirun) opens one for the whole sweep (`SharedRuntimeCallback`, registered in
`conf/config.yaml`); scripts and notebooks wrap their runs in `with shared_runtime(): ...`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from hydra.experimental.callback import Callback

_depth = 0
_pool: tuple[dict[str, Any], Any] | None = None  # (client resources, flwr BasicActorPool) kept between runs
_original: type | None = None
stats = {"pools_built": 0, "pools_reused": 0}
"""How many runs built an actor pool and how many reused one (read by tests and benchmarks)."""


def _drop_pool() -> None:
    global _pool
    if _pool is not None:
        _pool[1].terminate_all_actors()
        _pool = None


def _kept_backend(base: type) -> type:
    """`base` (Flower's RayBackend) keeping Ray and its idle actors when a run terminates."""

    class KeptRayBackend(base):  # type: ignore[misc,valid-type]
        def build(self, app_fn: Callable[[], Any]) -> None:
            global _pool
            if _pool is not None and _pool[0] == self.client_resources and len(_pool[1].pool) == _pool[1].num_actors:
                self.pool, self.app_fn = _pool[1], app_fn
                stats["pools_reused"] += 1
                return
            _drop_pool()
            super().build(app_fn)
            _pool = (dict(self.client_resources), self.pool)
            stats["pools_built"] += 1

        def terminate(self) -> None:
            if self.pool is not None and len(self.pool.pool) != self.pool.num_actors:
                _drop_pool()  # actors still busy: the run crashed; do not hand them to the next run

    return KeptRayBackend


@contextlib.contextmanager
def shared_runtime() -> Iterator[None]:
    """Keep one Ray runtime (and its actors) for every Flower simulation run inside; re-entrant."""
    global _depth, _original
    from flwr.server.superlink.fleet.vce.backend import raybackend

    if _depth == 0:
        _original = raybackend.RayBackend
        raybackend.RayBackend = _kept_backend(_original)  # type: ignore[misc,assignment]
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            raybackend.RayBackend = _original  # type: ignore[misc,assignment]
            _drop_pool()
            import ray

            if ray.is_initialized():
                ray.shutdown()


PROMPT_WAIT_S = 0.01
"""The longest the simulation engine's threads wait before looking again (`prompt_engine`)."""


class _PromptQueue(queue.Queue):  # type: ignore[type-arg]
    """Flower's engine queue, whose blocking `get` gives up after at most `PROMPT_WAIT_S` (Flower's: 1 s).

    Flower's workers and reply writer call `get(timeout=1.0)` and, on `Empty`, look at the stop event and wait
    again: a message is taken the moment it arrives either way, but a finished run waits up to 1 s for its
    threads to notice the stop. Here they notice within `PROMPT_WAIT_S`.
    """

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block and timeout is not None:
            timeout = min(timeout, PROMPT_WAIT_S)
        return super().get(block, timeout)


def _prompt_extractor(state: Any, messages: queue.Queue[Any], nodes_mapping: Any, f_stop: threading.Event) -> None:
    """Flower's `add_messages_to_queue`, looking every `PROMPT_WAIT_S` instead of every 0.1 s.

    It hands each node's waiting message to the workers; at 0.1 s a message waited 0.05 s on average.
    """
    while not f_stop.is_set():
        for node_id in nodes_mapping:
            for message in state.get_message_ins(node_id=node_id, limit=1):
                messages.put(message)
        f_stop.wait(PROMPT_WAIT_S)


@contextlib.contextmanager
def prompt_engine() -> Iterator[bool]:
    """Flower's simulation engine (flwr 1.42) without its fixed waits; yields whether they were replaced.

    Its message extractor polls every 0.1 s and its threads block 1 s before they see a finished run's stop
    event; fedrec's simulations run with `PROMPT_WAIT_S` instead (same messages, same order of work: only the
    waits change; `tests/test_runtime.py` checks the models against the in-process grid's). Another flwr version
    is left as it is.
    """
    import flwr
    from flwr.server.superlink.fleet.vce import vce_api

    expected = (getattr(vce_api, "Queue", None) is queue.Queue
                and callable(getattr(vce_api, "add_messages_to_queue", None)) and flwr.__version__.startswith("1.42."))
    if not expected:
        yield False
        return
    original = vce_api.Queue, vce_api.add_messages_to_queue
    vce_api.Queue, vce_api.add_messages_to_queue = _PromptQueue, _prompt_extractor  # type: ignore[misc,assignment]
    try:
        yield True
    finally:
        vce_api.Queue, vce_api.add_messages_to_queue = original  # type: ignore[misc]


class SharedRuntimeCallback(Callback):
    """Hydra callback: every job of a multirun (`fedrec -m ...`) shares one Ray runtime."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._before: dict[str, int] = {}

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._before = dict(stats)
        self._stack.enter_context(shared_runtime())

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._stack.close()
        built, reused = (stats[k] - self._before.get(k, 0) for k in ("pools_built", "pools_reused"))
        if built + reused:
            print(f"fedrec: {built + reused} simulation(s) shared one Ray runtime (actor pool built {built} time(s))")
