"""A region's adoption policy (`adoption.REGION` / `adoption.default`, or a jurisdiction's node config).

Which model a region serves is decided inside its silo (`fedrec.silo.serving`, `fedrec.silo.adaptation`); this
is only the policy, validated with the region and key in every message. Its fields are the one source of
every default (`conf/config.yaml` documents them).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

from fedrec.errors import ConfigError
from fedrec.metrics import METRICS

ADOPTION_KINDS = ("always", "if_better", "adapt")
"""`adopt:` values (the other policies are `pin:` and `fork:`)."""
ADAPT_KEYS = ("adapt_rounds", "mu", "confidence")
"""Keys that only `adopt: adapt` takes."""
GUARD_KEYS = ("guard", "guard_k", "guard_max_exposure", "guard_support")
"""Keys of the region-side guard (`fedrec.silo.guard`), which `adopt: always` and `adopt: if_better` apply."""
MAX_MU = 16
"""The most prior strengths `mu` may list (a run config may set the policy of a silo whose node config does not)."""


def _parse_mu(where: str, value: Any) -> tuple[float, ...]:
    """`mu`: a list of numbers >= 0 (node config: one number or a comma-separated string)."""
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    items = [items] if isinstance(items, int | float) and not isinstance(items, bool) else items
    fix = "give a list of finite numbers >= 0, e.g. [0, 1, 10, 100] (the candidate itself, μ=∞, is always scored)"
    if not isinstance(items, list | tuple) or not items:
        raise ConfigError(f"{where}.mu={value!r} is invalid: {fix}")
    out = []
    for v in items:
        try:
            mu = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            mu = math.nan
        if not (math.isfinite(mu) and mu >= 0):
            raise ConfigError(f"{where}.mu={value!r} is invalid ({v!r}): {fix}")
        out.append(mu)
    if len(set(out)) > MAX_MU:  # each μ is a solve, a refit and a full ranking per evaluation message, held at once
        raise ConfigError(f"{where}.mu has {len(set(out))} values: at most {MAX_MU} (each is one more adapted model "
                          "the silo builds and scores on every evaluation message)")
    return tuple(sorted(set(out)))


def _guard(where: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The guard's keys, checked (node config may give them as strings)."""
    out: dict[str, Any] = {}
    guard = cfg.get("guard", True)
    if isinstance(guard, str) and guard.lower() in ("true", "false"):
        guard = guard.lower() == "true"
    if not isinstance(guard, bool):
        raise ConfigError(f"{where}.guard={guard!r} must be true or false")
    out["guard"] = guard
    if not guard and (unused := [k for k in ("guard_k", "guard_max_exposure", "guard_support") if k in cfg]):
        raise ConfigError(f"{where}: {unused} tune the guard, which guard: false turns off; remove them or the "
                          "guard: false")
    for key, ok, text in (("guard_k", lambda v: v >= 1, ">= 1 (a multiple of the median row's move)"),
                          ("guard_max_exposure", lambda v: 0 < v <= 1, "in (0, 1] (1: no cap)"),
                          ("guard_support", lambda v: 0 <= v <= 1, "in [0, 1] (a quantile over items)")):
        if key not in cfg:
            continue
        value = cfg[key]
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not ok(value):
            raise ConfigError(f"{where}.{key}={cfg[key]!r} must be a number {text}")
        out[key] = float(value)
    return out


@dataclass(frozen=True)
class AdoptionPolicy:
    """One region's policy; `from_config` validates it with the region and key in the message.

    `adapt_rounds`, `mu` and `confidence` belong to `adopt: adapt`: the local fine-tuning rounds of an SGD
    model (for iALS: the adapted model's alternating sweeps, and its own line's local sweeps per round), the
    prior strengths of iALS's item solve, and how sure the silo must be that a model beats its own line
    before serving it (a one-sided paired test over its validation users, `fedrec.silo.adaptation`; 0: serve
    the plain validation-best).
    """

    kind: str = "always"
    metric: str = "ndcg@20"
    margin: float = 0.0
    version: str | None = None
    from_round: int | None = None
    contribute: bool = True
    adapt_rounds: int = 1
    mu: tuple[float, ...] = (0.0, 1.0, 10.0, 100.0)
    confidence: float = 0.95
    guard: bool = True
    """`adopt: always | if_better`: hold back item rows that jumped beyond the round's others (`fedrec.silo.guard`)."""
    guard_k: float = 10.0
    """The guard's bound: a row moving more than this multiple of the median row's move is flagged."""
    guard_max_exposure: float = 0.05
    """The guard's cap: an item the region's data does not support is withheld above this share of its users' top 20."""
    guard_support: float = 0.5
    """Unsupported: an item with at most this quantile (over items) of the region's own training interactions."""

    @property
    def guarded(self) -> bool:
        """Whether this region guards the global versions it adopts."""
        return self.guard and self.kind in ("always", "if_better")

    @classmethod
    def from_config(cls, region: str, cfg: dict[str, Any]) -> AdoptionPolicy:
        """Parse `{adopt: always|if_better|adapt, metric:, margin:}`, `{pin: ID}` or `{fork: ID|round}`."""
        where = f"adoption.{region}"
        known = {"adopt", "metric", "margin", "pin", "fork", "contribute", *ADAPT_KEYS, *GUARD_KEYS}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        chosen = [k for k in ("adopt", "pin", "fork") if k in cfg]
        if len(chosen) != 1:
            raise ConfigError(f"{where}: give exactly one of adopt / pin / fork, got {chosen or 'none'}")
        metric, margin = str(cfg.get("metric", "ndcg@20")), cfg.get("margin", 0.0)
        if metric not in METRICS:
            raise ConfigError(f"{where}.metric={metric!r} is unknown; choose one of {METRICS}")
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin) or margin < 0:
            raise ConfigError(f"{where}.margin={margin!r} must be a number >= 0")
        contribute = cfg.get("contribute", True)
        if not isinstance(contribute, bool):
            raise ConfigError(f"{where}.contribute={contribute!r} must be true or false")
        kind = str(cfg["adopt"]) if "adopt" in cfg else None
        if kind is not None and kind not in ADOPTION_KINDS:
            raise ConfigError(f"{where}.adopt={kind!r}: choose always, if_better or adapt (or use pin / fork)")
        if kind not in ("if_better", "adapt") and (unused := [k for k in ("metric", "margin") if k in cfg]):
            raise ConfigError(f"{where}: {unused} apply to adopt: if_better / adapt only (they compare scores; "
                              f"{kind or chosen[0]} compares none)")
        if "pin" in cfg and not contribute:
            raise ConfigError(f"{where}: pin with contribute: false is not a policy fedrec runs (a pinned region "
                              f"still trains for the global line); to train alone and send nothing use "
                              f"{where}.fork=0 with contribute: false")
        if kind != "adapt" and (extra := [k for k in ADAPT_KEYS if k in cfg]):
            raise ConfigError(f"{where}: {extra} apply to adopt: adapt only; remove them or set "
                              f"{where}.adopt=adapt")
        if kind not in ("always", "if_better") and (extra := [k for k in GUARD_KEYS if k in cfg]):
            raise ConfigError(f"{where}: {extra} apply to adopt: always / if_better only (the guard checks each "
                              "global version a region adopts; adapt serves a model only when it beats the "
                              "region's own line, pin and fork choose a line)")
        if kind == "adapt":
            return cls._adapt(where, cfg, metric=metric, margin=float(margin), contribute=contribute)
        if kind is not None:
            if not contribute:
                raise ConfigError(f"{where}: adopt: {kind} with contribute: false is not a policy fedrec runs (a "
                                  f"region that adopts the global line trains for it); to train alone and send "
                                  f"nothing use {where}.fork=0 with contribute: false")
            return cls(kind=kind, metric=metric, margin=float(margin), contribute=contribute, **_guard(where, cfg))
        if "pin" in cfg:
            if not isinstance(cfg["pin"], str) or not cfg["pin"]:
                raise ConfigError(f"{where}.pin must be a model version id, got {cfg['pin']!r}")
            return cls(kind="pin", version=cfg["pin"], contribute=contribute)
        start = cfg["fork"]
        if isinstance(start, bool) or not isinstance(start, int | str) or (isinstance(start, int) and start < 0):
            raise ConfigError(f"{where}.fork must be a version id or a round number >= 0, got {start!r}")
        return cls(kind="fork", version=start if isinstance(start, str) else None,
                   from_round=start if isinstance(start, int) else None, contribute=contribute)

    @classmethod
    def _adapt(cls, where: str, cfg: dict[str, Any], *, metric: str, margin: float, contribute: bool
               ) -> AdoptionPolicy:
        """`adopt: adapt` with its own keys checked."""
        if not contribute:
            raise ConfigError(f"{where}: adopt: adapt keeps contributing (its adaptation sends nothing); to "
                              f"train alone and send nothing use {where}.fork=0 with contribute: false")
        rounds = cfg.get("adapt_rounds", cls.adapt_rounds)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 100:
            raise ConfigError(f"{where}.adapt_rounds={rounds!r} is invalid: a whole number of local fine-tuning "
                              "rounds from 1 to 100 (e.g. 1)")
        mu = _parse_mu(where, cfg["mu"]) if "mu" in cfg else cls.mu
        confidence = cfg.get("confidence", cls.confidence)
        if isinstance(confidence, str):
            with contextlib.suppress(ValueError):
                confidence = float(confidence)
        if (isinstance(confidence, bool) or not isinstance(confidence, int | float)
                or not (confidence == 0 or 0.5 <= confidence < 1)):
            raise ConfigError(f"{where}.confidence={confidence!r} is invalid: a probability in [0.5, 1) (e.g. 0.95: "
                              "serve a model other than the region's own line only when a paired test on its "
                              "validation users says it is better at that confidence), or 0 for the plain "
                              "validation-best")
        return cls(kind="adapt", metric=metric, margin=margin, adapt_rounds=rounds, mu=mu,
                   confidence=float(confidence))
