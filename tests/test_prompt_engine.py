"""fedrec's simulations run Flower's engine without its fixed waits (`fedrec.flower.runtime.prompt_engine`).

The waits are replaced only inside the context and only on the flwr version they were read from; the engine's
queue still delivers every message and still reports an empty queue to the threads that poll it. That the models
equal the in-process grid's with the replacement in place is checked on the real engine in `test_runtime.py`.
"""

from __future__ import annotations

import queue
import threading

import pytest
from flwr.server.superlink.fleet.vce import vce_api

from fedrec.flower import runtime


def test_the_engine_waits_are_replaced_inside_the_context_only() -> None:
    before = vce_api.Queue, vce_api.add_messages_to_queue
    with runtime.prompt_engine() as replaced:
        assert replaced
        assert vce_api.Queue is runtime._PromptQueue
        assert vce_api.add_messages_to_queue is runtime._prompt_extractor
    assert (vce_api.Queue, vce_api.add_messages_to_queue) == before


def test_an_unexpected_flower_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr

    monkeypatch.setattr(flwr, "__version__", "1.99.0")
    before = vce_api.Queue, vce_api.add_messages_to_queue
    with runtime.prompt_engine() as replaced:
        assert not replaced
        assert (vce_api.Queue, vce_api.add_messages_to_queue) == before


def test_the_prompt_queue_caps_each_blocking_wait_and_delivers_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[float | None] = []
    real_get = queue.Queue.get

    def spy(self: queue.Queue, block: bool = True, timeout: float | None = None) -> object:
        asked.append(timeout)
        return real_get(self, block, timeout)

    monkeypatch.setattr(queue.Queue, "get", spy)
    q = runtime._PromptQueue()
    with pytest.raises(queue.Empty):
        q.get(timeout=1.0)  # what Flower's workers and reply writer ask for
    q.put("a")
    q.put("b")
    assert [q.get(timeout=1.0), q.get()] == ["a", "b"]
    assert asked == [runtime.PROMPT_WAIT_S, runtime.PROMPT_WAIT_S, None]


def test_the_extractor_hands_every_waiting_message_to_the_workers_until_stopped() -> None:
    class State:
        def __init__(self) -> None:
            self.waiting = {1: ["m1", "m2"], 2: ["m3"]}

        def get_message_ins(self, node_id: int, limit: int) -> list[str]:
            out, self.waiting[node_id] = self.waiting[node_id][:limit], self.waiting[node_id][limit:]
            return out

    messages: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(target=runtime._prompt_extractor, args=(State(), messages, {1: 0, 2: 1}, stop))
    thread.start()
    got = [messages.get(timeout=10) for _ in range(3)]
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert sorted(got) == ["m1", "m2", "m3"]
