"""Measure a transition: whether every region serves a model at every moment while one leaves, the rest rebuild.

`TransitionMonitor` samples every region's serving state in a background thread (every `interval_s`, a few
ms) the way a serving process reads it (`fedrec.silo.served_now`: the pointer, then the whole model it names)
and records per region the samples taken, the samples with no readable served model (no pointer, a partial or
unparsable pointer, a pointer to a model that is not stored or does not load) with the first few reasons, and
the sequence of distinct models served.

`run_transition` drives one: region R leaves (`fedrec.divestment.leave`: its own line, trained in its silo,
then switched to) while the remaining regions' line is rebuilt without it (`fedrec.divestment.divest`), at the
same time or one after the other, under the monitor.

What the figures mean, and what they do not: a sample is one read of the state dir by a separate thread of the
same process; a moment between two samples is not observed, so zero empty samples bounds a gap's length (about
the interval, given enough samples), it does not prove there was none. The deterministic complement is the
write order (`fedrec.silo.serving`: model first, pointer after it, the replaced model kept), which the tests
also check at every pointer move. A model server outside the state dir, and the users a global version is
served with, are not measured.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from fedrec.divestment.leave import DEFAULT_ROUNDS, leave
from fedrec.divestment.run import Divestment, Engine, divest
from fedrec.errors import ConfigError
from fedrec.settings import RunSettings, read_manifest, silo_state_root
from fedrec.silo.departure import Departure
from fedrec.silo.served_now import served_now

DEFAULT_INTERVAL_S = 0.002
MAX_PROBLEMS = 5


@dataclass
class RegionWatch:
    """What the monitor saw of one region."""

    samples: int = 0
    empty: int = 0
    """Samples with no readable served model."""
    served: list[str] = field(default_factory=list)
    """The distinct models served, in the order they were first seen after a change (`ServedNow.model_id`)."""
    problems: list[str] = field(default_factory=list)
    """The first few reasons a sample found no served model."""

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "empty": self.empty, "served": list(self.served),
                "problems": list(self.problems)}


class TransitionMonitor:
    """Samples each region's serving state in a background thread while the `with` block runs.

    One sample of every region is taken synchronously on entry and on exit, so the first and last states are
    always recorded.
    """

    def __init__(self, state_dirs: Mapping[str, Path], *, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ConfigError(f"interval_s={interval_s!r} must be > 0")
        self.state_dirs = {r: Path(d) for r, d in state_dirs.items()}
        self.interval_s = interval_s
        self.regions = {r: RegionWatch() for r in self.state_dirs}
        self.wall_time_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def sample(self) -> None:
        """Read every region's serving state once."""
        for region, state_dir in self.state_dirs.items():
            now, watch = served_now(state_dir), self.regions[region]
            watch.samples += 1
            if not now.ok:
                watch.empty += 1
                if len(watch.problems) < MAX_PROBLEMS:
                    watch.problems.append(now.problem)
            elif not watch.served or watch.served[-1] != now.model_id:
                watch.served.append(now.model_id)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> TransitionMonitor:
        self._t0 = time.perf_counter()
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="transition-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        self.wall_time_s = time.perf_counter() - self._t0

    def to_dict(self) -> dict[str, Any]:
        return {"interval_s": self.interval_s, "wall_time_s": self.wall_time_s,
                "regions": {r: w.to_dict() for r, w in self.regions.items()}}


@dataclass(frozen=True)
class Transition:
    """One measured transition: the rebuilt line, the departure, and what the monitor saw."""

    divestment: Divestment
    departure: Departure
    monitor: dict[str, Any]

    @property
    def empty_samples(self) -> dict[str, int]:
        return {r: int(w["empty"]) for r, w in self.monitor["regions"].items()}

    def to_dict(self) -> dict[str, Any]:
        return {"divestment": self.divestment.to_dict(), "departure": self.departure.to_dict(),
                "monitor": self.monitor}


def world_state_dirs(settings: RunSettings) -> dict[str, Path]:
    """Every region's state dir as the run `settings` kept them."""
    root = silo_state_root(settings)
    if root is None:
        raise ConfigError("the run kept no silo state (no state-dir nor output-dir): there is nothing to monitor")
    return {str(r): root / str(r) for r in read_manifest(settings.data_dir)["regions"]}


def run_transition(settings: RunSettings, region: str, *, out_dir: Path, engine: Engine, method: str = "exact",
                   rounds: int = DEFAULT_ROUNDS, concurrent: bool = True, interval_s: float = DEFAULT_INTERVAL_S,
                   **divest_kw: Any) -> Transition:
    """`region` leaves (its own line) while the others' line is rebuilt without it, every region monitored.

    `concurrent=False` runs the departure first, then the divestment. The rebuilt line's versions are reviewed
    by the remaining regions as their adoption policies say; `region`'s silo is not part of the rebuilt run.
    """
    with TransitionMonitor(world_state_dirs(settings), interval_s=interval_s) as monitor:
        if concurrent:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="leave") as pool:
                leaving = pool.submit(leave, settings, region, rounds=rounds)
                divested = divest(settings, [region], method=method, out_dir=out_dir, engine=engine, **divest_kw)
                departed = leaving.result()
        else:
            departed = leave(settings, region, rounds=rounds)
            divested = divest(settings, [region], method=method, out_dir=out_dir, engine=engine, **divest_kw)
    return Transition(divestment=divested, departure=departed, monitor=monitor.to_dict())
