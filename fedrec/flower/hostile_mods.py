"""Research tooling: Flower client mods that turn some silos' training replies hostile, as a compromised node would.

For simulations and tests only. A mod here is attached from Python (`make_client_app(mods=[...])`, or an
engine such as `functools.partial(run_in_process, client_mods=[...])`); no run-config or node-config key names
one, so no deployment can switch one on. Each mod lets the silo build its honest reply, then rewrites the
global parameters in it (the aggregation weight, region, round and version stay honest), exactly where a
compromised node's operator could: after the silo's own code, before the reply leaves.

The *update* is what the screen measures (`fedrec.coordinator.screen.update_norm`): the reply's parameters minus
the global model the round sent, every global parameter included (MF: the item embeddings, item biases and
global bias; two-tower: also the item tower). Each attack is sized against the silo's *honest* update norm:
- `targeted_boost`: push one item's global bias up (optionally its embedding row too) until the update's norm
  is `multiple` × the honest one: the attack of issue 16 ("steer another region's feed"). Only for models with
  a global item bias (MF, two-tower); `check_boostable` refuses the others before a run.
- `sign_flip`: the honest update negated (the same norm, the opposite direction).
- `scaled_noise`: Gaussian noise added until the norm is `multiple` × the honest one.
Every mod takes one region or several (colluding silos, each applying the attack to its own reply).
`update_norm_log` is the observer that sizes them: it writes each training reply's update norm to a file.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

from fedrec.exposure import ITEM_BIAS
from fedrec.flower.egress_recorder import Mod
from fedrec.messages import read_arrays, read_int, read_region
from fedrec.models import ModelSpec
from fedrec.silo.round import global_shapes

Arrays = dict[str, np.ndarray]
Attack = Callable[[Arrays, Arrays, str, int], Arrays]
"""(honest reply's parameters, the global parameters sent, region, round) → the parameters to send instead."""

ITEM_EMB = "item_emb.weight"
POPULAR_ITEMS = 50
"""`targeted_boost` with `row_share > 0` moves the item's row towards the mean row of this many items with the
largest global bias: the direction the average user's taste points to, read from the model the round sent."""


def _f64(arrays: Arrays) -> Arrays:
    return {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}


def norm_of(update: Arrays) -> float:
    """L2 norm over every array (as the screen computes an update's norm)."""
    return math.sqrt(sum(float(np.sum(np.asarray(v, dtype=np.float64) ** 2)) for v in update.values()))


def _extend_to_norm(delta: Arrays, direction: Arrays, target: float) -> float:
    """The step t >= 0 with ||delta + t·direction|| = target (`direction` of unit norm); ValueError if none."""
    along = sum(float(np.sum(delta[k] * d)) for k, d in direction.items())
    honest_sq = norm_of(delta) ** 2
    disc = along**2 + target**2 - honest_sq
    tol = 1e-12 * max(target**2, honest_sq, 1e-300)  # rounding: at multiple 1 the exact answer may be a step of 0
    step = -along + math.sqrt(max(disc, 0.0))
    if disc < -tol or step < -math.sqrt(tol):
        raise ValueError(f"no step along this direction reaches norm {target:.4g} from {math.sqrt(honest_sq):.4g}")
    return max(step, 0.0)


def _apply(reply: Arrays, sent: Arrays, delta: Arrays) -> Arrays:
    """`sent + delta`, each array in the reply's dtype."""
    return {k: (sent[k] + delta[k]).astype(reply[k].dtype) for k in reply}


def boost_update(reply: Arrays, sent: Arrays, *, item: int, multiple: float, row_share: float = 0.0,
                 cap: float | None = None) -> Arrays:
    """The reply with `item`'s global bias raised so that ||reply' − sent|| = `multiple` × ||reply − sent||.

    With `row_share` > 0 the item's embedding row also moves, towards the mean row of the `POPULAR_ITEMS` items
    with the largest global bias; `row_share` is the share of the added vector's squared norm put on the row
    (0: bias only). `cap`: every boosted value of the item (its bias, and its row with `row_share`) stays within
    [-cap, cap] unless honest training already put it outside (e.g. just inside SecAgg+'s clipping range, where
    a larger value would be refused by the attacker's own SecAgg+ client); the norm is then smaller.
    """
    if ITEM_BIAS not in reply:
        raise ValueError(f"targeted_boost needs a global item bias ({ITEM_BIAS}); this model sends "
                         f"{sorted(reply)}: use an MF or two-tower model")
    if multiple < 1:
        raise ValueError(f"multiple={multiple} must be >= 1 (the boost adds to the honest update)")
    if not 0 <= row_share <= 1:
        raise ValueError(f"row_share={row_share} must be in [0, 1]")
    if row_share > 0 and ITEM_EMB not in reply:
        raise ValueError(f"row_share={row_share} needs item rows ({ITEM_EMB}); this model sends {sorted(reply)}")
    n_items = reply[ITEM_BIAS].shape[0]
    if not 0 <= item < n_items:
        raise ValueError(f"item {item} is not in the catalog (0..{n_items - 1})")
    s64, r64 = _f64(sent), _f64(reply)
    delta = {k: r64[k] - s64[k] for k in reply}
    direction = {k: np.zeros_like(v) for k, v in delta.items()}
    direction[ITEM_BIAS][item] = math.sqrt(1.0 - row_share)
    if row_share > 0:
        top = np.argsort(-s64[ITEM_BIAS].reshape(-1), kind="stable")[:POPULAR_ITEMS]
        towards = s64[ITEM_EMB][top].mean(0)
        if np.linalg.norm(towards) > 0:
            direction[ITEM_EMB][item] = math.sqrt(row_share) * towards / np.linalg.norm(towards)
        else:
            direction[ITEM_BIAS][item] = 1.0
    step = _extend_to_norm(delta, direction, multiple * norm_of(delta))
    boosted = {k: delta[k] + step * direction[k] for k in delta}
    if cap is not None:  # every boosted value of the item (bias, row) kept within [-cap, cap], never below honest
        for key in (ITEM_BIAS, ITEM_EMB) if row_share > 0 else (ITEM_BIAS,):
            value = s64[key][item] + boosted[key][item]
            honest = s64[key][item] + delta[key][item]
            lo, hi = np.minimum(honest, -cap), np.maximum(honest, cap)
            boosted[key][item] = np.clip(value, lo, hi) - s64[key][item]
    return _apply(reply, s64, boosted)


def flip_update(reply: Arrays, sent: Arrays) -> Arrays:
    """The honest update negated: sent − (reply − sent)."""
    s64, r64 = _f64(sent), _f64(reply)
    return _apply(reply, s64, {k: s64[k] - r64[k] for k in reply})


def noise_update(reply: Arrays, sent: Arrays, *, multiple: float, rng: np.random.Generator) -> Arrays:
    """The honest update plus isotropic Gaussian noise scaled so that the norm is `multiple` × the honest one."""
    if multiple < 1:
        raise ValueError(f"multiple={multiple} must be >= 1")
    s64, r64 = _f64(sent), _f64(reply)
    delta = {k: r64[k] - s64[k] for k in reply}
    noise = {k: rng.standard_normal(v.shape) for k, v in delta.items()}
    scale = norm_of(noise)
    direction = {k: v / scale for k, v in noise.items()}
    step = _extend_to_norm(delta, direction, multiple * norm_of(delta))
    return _apply(reply, s64, {k: delta[k] + step * direction[k] for k in delta})


def _regions(region: str | Collection[str]) -> frozenset[str]:
    regions = frozenset([region] if isinstance(region, str) else region)
    if not regions:
        raise ValueError("name at least one region whose replies turn hostile")
    return regions


def _training_reply(msg: Message, reply: Message) -> bool:
    """A training reply that carries global parameters (not an error, a decline or a statistics-free message)."""
    return (msg.metadata.message_type == "train" and reply.has_content()
            and "arrays" in reply.content.array_records and "meta" in reply.content.config_records)


def hostile_mod(region: str | Collection[str], attack: Attack) -> Mod:
    """A mod rewriting the training replies of `region` (one name or several colluding ones) with `attack`."""
    regions = _regions(region)

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, context)
        if not _training_reply(msg, reply) or read_region(reply.content) not in regions:
            return reply
        sent = read_arrays(msg.content)
        honest = read_arrays(reply.content)
        rnd = read_int(reply.content, "meta", "server-round")
        attacked = attack(honest, sent, read_region(reply.content), rnd)
        reply.content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in attacked.items()})
        return reply

    return mod


def check_boostable(spec: ModelSpec, n_items: int) -> None:
    """Refuse, before a run, a model whose global parameters have no item bias for `targeted_boost` to raise."""
    shapes = global_shapes(json.dumps(spec.to_dict(), sort_keys=True), n_items)
    if ITEM_BIAS not in shapes:
        raise ValueError(f"model={spec.name} has no global item bias ({ITEM_BIAS}; its global parameters are "
                         f"{sorted(shapes)}): targeted_boost needs model=mf or model=twotower")


def targeted_boost(region: str | Collection[str], item: int, multiple: float, *, row_share: float = 0.0,
                   cap: float | None = None) -> Mod:
    """`region`'s training replies boost `item` (`boost_update`) to `multiple` × their honest update norm."""
    if item < 0 or multiple < 1 or not 0 <= row_share <= 1:  # checked now rather than mid-run
        raise ValueError(f"targeted_boost(item={item}, multiple={multiple}, row_share={row_share}): need item >= 0, "
                         "multiple >= 1 and 0 <= row_share <= 1")
    return hostile_mod(region, lambda reply, sent, _r, _n: boost_update(reply, sent, item=item, multiple=multiple,
                                                                        row_share=row_share, cap=cap))


def sign_flip(region: str | Collection[str]) -> Mod:
    """`region`'s training replies send the honest update negated."""
    return hostile_mod(region, lambda reply, sent, _r, _n: flip_update(reply, sent))


def scaled_noise(region: str | Collection[str], multiple: float, *, seed: int = 0) -> Mod:
    """`region`'s training replies add Gaussian noise up to `multiple` × the honest norm.

    The noise is seeded per region and round, so a run replays the same on any engine.
    """
    if multiple < 1:
        raise ValueError(f"multiple={multiple} must be >= 1")

    def attack(reply: Arrays, sent: Arrays, region_: str, rnd: int) -> Arrays:
        rng = np.random.default_rng([seed, zlib.crc32(region_.encode()), rnd])
        return noise_update(reply, sent, multiple=multiple, rng=rng)

    return hostile_mod(region, attack)


def update_norm_log(path: Path) -> Mod:
    """An observer (not hostile): append each training reply's region, round and update norm to `path` (JSONL)."""
    path = Path(path)

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, context)
        if _training_reply(msg, reply):
            sent, sends = read_arrays(msg.content), read_arrays(reply.content)
            if set(sent) == set(sends):
                norm = norm_of({k: _f64(sends)[k] - _f64(sent)[k] for k in sent})
                line = {"region": read_region(reply.content), "round": read_int(reply.content, "meta", "server-round"),
                        "norm": norm}
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a") as f:
                    f.write(json.dumps(line) + "\n")
        return reply

    return mod


def read_norm_log(path: Path) -> dict[int, dict[str, float]]:
    """`update_norm_log`'s file as {round: {region: norm}} (a region's last line for a round wins)."""
    out: dict[int, dict[str, float]] = {}
    for line in Path(path).read_text().splitlines():
        entry = json.loads(line)
        out.setdefault(int(entry["round"]), {})[str(entry["region"])] = float(entry["norm"])
    return out


def screen_limit_multiple(norms: dict[int, dict[str, float]], attacker: str | Collection[str], *,
                          norm_factor: float = 10.0) -> float:
    """The largest multiple of their honest norms the `attacker` regions could send in every recorded round.

    From a recorded run (`read_norm_log`): the screen lets an update through up to `norm_factor` × the round's
    median update norm, the attackers' inflated norms counted in that median as the screen counts them.

    A run with the attack drifts from the recorded one, so sizing an attack from it only predicts the limit: a
    study reports what the screen did (`round_log` rejections). `inf`: no multiple is ever rejected.
    """
    attackers = _regions(attacker)
    limits = []
    for by_region in norms.values():
        mine = [by_region[r] for r in attackers if r in by_region]
        others = [n for r, n in by_region.items() if r not in attackers]
        if not mine or len(mine) + len(others) < 3:  # the screen compares norms only with 3 replies or more
            continue

        def passes(m: float, mine: list[float] = mine, others: list[float] = others) -> bool:
            median = float(np.median([m * n for n in mine] + others))
            return all(m * n <= norm_factor * median for n in mine)

        lo, hi = 1.0, 1.0
        if not passes(lo):  # the honest update itself would be rejected: no room at all
            limits.append(1.0)
            continue
        while passes(hi) and hi < 1e6:
            lo, hi = hi, hi * 2
        if passes(hi):  # colluders who set the median themselves: the screen never stops them
            limits.append(math.inf)
            continue
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if passes(mid) else (lo, mid)
        limits.append(lo)
    if not limits:
        raise ValueError(f"no recorded round has a training reply of {sorted(attackers)} among 3 or more")
    return min(limits)
