"""Per region, what its updates added to the current global model: what fast divestment subtracts.

Under FedAvg / FedAvgM (Flower's, server learning rate η, momentum β; FedAvg is β = 0, η = 1) a round moves the
global model by −η m_t, where m_t = β m_{t-1} + g_t and the pseudo-gradient g_t = Σ_i (w_i / W) (sent − x_i) is a
weighted sum over the silos that replied. Everything is linear in the replies, so each region's part can be
followed on its own: m_r ← β m_r + (w_r / W)(sent − x_r) (0 in a round it did not reply to) and its total
effect on the model T_r ← T_r − η m_r. Σ_r T_r is the line's whole movement from the version it started at
(up to float rounding: the model is kept in float32, these in float64).

Subtracting T_r removes region r's direct part, but leaves every round's average divided by a total weight W that
still counts r: the others' updates then move the model by (W - w_r) / W of what their own average would have.
So the ledger also follows, per region, the line *reweighted without it*: each round's pseudo-gradient g - g_r
rescaled by W / (W - w_r) (the average of the others; nothing when r trained alone; the whole g in a round r did
not reply to), through the same momentum: R_r. `start + R_r` is the line as the others' recorded updates would
have moved it without r, which is what fast divestment of one region starts from. Neither removes what r's part
did to the other regions' later updates (they trained on a model r had moved): that is why fast divestment is
approximate and calibrates with recovery rounds (`fedrec.divestment`).

Only what the coordinator already sees is used: the replies it aggregates, in the clear. Under SecAgg+ it never
sees a region's own update, and robust rules (trimmed mean, nnm, Krum, ...) are not linear: for those the
coordinator keeps nothing and only exact divestment (retraining) applies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save

from fedrec.errors import ConfigError
from fedrec.io import atomic_write_bytes

CONTRIBUTIONS_FILE = "contributions.safetensors"
WHOLE = "*"
"""The ledger's entry for the whole line (every region's part): where a region that joins late starts its
reweighted line."""
_SEP = "::"


def contributions_problem(*, strategy: str, robust: str, secure_aggregation: str, statistics: bool) -> str | None:
    """Why this run's contributions cannot be kept (None: they can)."""
    if statistics:
        return "a statistics model (EASE / iALS) is solved from summed statistics, not averaged updates"
    if secure_aggregation == "secaggplus":
        return "under SecAgg+ the coordinator never sees a region's own update"
    if strategy not in ("fedavg", "fedavgm"):
        return f"strategy {strategy!r} is not linear in the updates (FedAdam divides by their running moments)"
    if robust not in ("none", "row_clip"):
        return f"robust rule {robust!r} is not linear in the updates"
    return None


class ContributionLedger:
    """Each region's total effect on the global model since the line's start version (`head`)."""

    def __init__(self, *, server_lr: float, momentum: float, start: str) -> None:
        self.server_lr, self.momentum = float(server_lr), float(momentum)
        self.start, self.head = start, start
        self.total: dict[str, dict[str, np.ndarray]] = {}
        self.velocity: dict[str, dict[str, np.ndarray]] = {}
        self.reweighted: dict[str, dict[str, np.ndarray]] = {}
        """Per region r: the line's movement from `start` with every round averaged without r (R_r)."""
        self.reweighted_velocity: dict[str, dict[str, np.ndarray]] = {}
        self.rounds: dict[str, list[int]] = {}

    def record(self, rnd: int, sent: Mapping[str, np.ndarray], replies: Mapping[str, tuple[Mapping[str, np.ndarray],
                                                                                            float]], head: str) -> None:
        """One aggregated round: `replies` maps region -> (its reply's arrays, its aggregation weight)."""
        total_weight = float(sum(w for _, w in replies.values()))
        if not total_weight > 0:
            raise ValueError(f"round {rnd}: the replies' weights sum to {total_weight}")
        parts = {r: {name: (w / total_weight) * (before.astype(np.float64) - arrays[name].astype(np.float64))
                     for name, before in sent.items()} for r, (arrays, w) in replies.items()}
        whole = {name: sum((p[name] for p in parts.values()), np.zeros(before.shape, np.float64))
                 for name, before in sent.items()}
        for region in sorted(set(replies) - set(self.velocity)):  # first reply: until now the line moved without it
            self.reweighted[region] = {k: v.copy() for k, v in self.total.get(WHOLE, {}).items()}
            self.reweighted_velocity[region] = {k: v.copy() for k, v in self.velocity.get(WHOLE, {}).items()}
        for name, before in sent.items():
            self._step(self.velocity, self.total, WHOLE, name, whole[name], np.zeros(before.shape, np.float64))
        for region in sorted((set(self.velocity) | set(replies)) - {WHOLE}):
            own = parts.get(region)
            weight = replies[region][1] if region in replies else 0.0
            rest = total_weight - weight
            for name, before in sent.items():
                zero = np.zeros(before.shape, np.float64)
                direct = own[name] if own is not None else zero
                without = whole[name] if own is None else (whole[name] - own[name]) * (total_weight / rest) \
                    if rest > 0 else zero
                self._step(self.velocity, self.total, region, name, direct, zero)
                self._step(self.reweighted_velocity, self.reweighted, region, name, without, zero)
            if region in replies:
                self.rounds.setdefault(region, []).append(rnd)
        self.head = head

    def regions(self) -> list[str]:
        """The regions whose contributions are recorded."""
        return sorted(set(self.total) - {WHOLE})

    def _step(self, velocities: dict[str, dict[str, np.ndarray]], totals: dict[str, dict[str, np.ndarray]],
              region: str, name: str, gradient: np.ndarray, zero: np.ndarray) -> None:
        """One momentum step for one region's one array: m ← β m + g, then T ← T − η m."""
        v = velocities.setdefault(region, {}).get(name)
        v = gradient if v is None else self.momentum * v + gradient
        velocities[region][name] = v
        t = totals.setdefault(region, {})
        t[name] = t.get(name, zero) - self.server_lr * v

    def without(self, arrays: Mapping[str, np.ndarray], regions: list[str]) -> dict[str, np.ndarray]:
        """`arrays` (the head's weights) less the recorded direct effect of `regions`, in each array's own dtype."""
        if missing := sorted(set(regions) - set(self.total) | ({WHOLE} & set(regions))):
            raise ConfigError(f"no recorded contribution of region(s) {missing}; recorded: {self.regions()}")
        out = {}
        for name, a in arrays.items():
            moved = sum((self.total[r][name] for r in regions), np.zeros(a.shape, np.float64))
            out[name] = np.ascontiguousarray((a.astype(np.float64) - moved).astype(a.dtype))
        return out

    def reweighted_without(self, start: Mapping[str, np.ndarray], region: str) -> dict[str, np.ndarray]:
        """`start` moved as the other regions' recorded updates would have moved it without `region`.

        `start` is the line's start version's weights; each round is averaged without `region`. In each array's own
        dtype.
        """
        if region not in self.reweighted or region == WHOLE:
            raise ConfigError(f"no recorded contribution of region {region!r}; recorded: {self.regions()}")
        return {name: np.ascontiguousarray((a.astype(np.float64) + self.reweighted[region][name]).astype(a.dtype))
                for name, a in start.items()}

    def save(self, out_dir: Path) -> None:
        """Write `contributions.safetensors` (atomic) in `out_dir`."""
        tensors = {f"{kind}{_SEP}{r}{_SEP}{name}": np.ascontiguousarray(a)
                   for kind, table in self._tables().items()
                   for r, arrays in table.items() for name, a in arrays.items()}
        meta = {"server_lr": self.server_lr, "momentum": self.momentum, "start": self.start, "head": self.head,
                "rounds": self.rounds}
        atomic_write_bytes(out_dir / CONTRIBUTIONS_FILE, save(tensors, metadata={"fedrec-contributions":
                                                                                  json.dumps(meta)}))

    @classmethod
    def load(cls, out_dir: Path) -> ContributionLedger:
        """Read what `save` wrote; a clear error when the run kept none."""
        path = out_dir / CONTRIBUTIONS_FILE
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: the run did not keep its contributions "
                              "(federation.keep_contributions=true); use exact divestment")
        data = path.read_bytes()
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {})["fedrec-contributions"])
        ledger = cls(server_lr=meta["server_lr"], momentum=meta["momentum"], start=meta["start"])
        ledger.head, ledger.rounds = meta["head"], {k: list(v) for k, v in meta["rounds"].items()}
        tables = ledger._tables()
        for key, a in load_safetensors(data).items():
            kind, region, name = key.split(_SEP, 2)
            tables[kind].setdefault(region, {})[name] = a
        return ledger

    def _tables(self) -> dict[str, dict[str, dict[str, np.ndarray]]]:
        return {"total": self.total, "velocity": self.velocity, "reweighted": self.reweighted,
                "reweighted_velocity": self.reweighted_velocity}
