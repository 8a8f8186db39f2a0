"""Robust aggregation at the coordinator, and who moved what: for a coordinator that sees each silo's update.

One silo's update can carry a crafted change to one item's row (its bias, its embedding) at a small multiple of
its honest norm, far inside the update screen, and put that item in the top 20 of other regions' users
(`simulations/steering.py`). Defences here act on item *rows*, the unit such an attack moves:

- `row_clip`: each silo's change to each item row is clipped to `clip` x max(r_j, floor), r_j the
  median over the round's silos of that row's change norm, floor the median over rows of r_j; then the
  configured strategy (FedAvg, FedAvgM, FedAdam) aggregates the clipped replies with their weights. A row
  is an item's entries in every array whose first dimension is the catalog size (item bias + item
  embedding row for MF). It clips instead of rejecting, so an honest silo with an unusual row keeps the
  rest of its update. Needs >= 3 contributors to act (with two, the median is their mean).
- `median` / `trimmed_mean`: Flower's FedMedian / FedTrimmedAvg (coordinate-wise, unweighted; built in
  `strategies.build_strategy`).
- `nnm`: nearest-neighbour mixing (Allouah et al., "Fixing by Mixing", AISTATS 2023) before Flower's
  FedTrimmedAvg, per item row: each silo's change to an item's row is replaced by the mean of the n - f silos'
  changes nearest to it on that row (itself included; f = int(trim_beta x n), the number of replies the trimmed
  mean cuts at each end), the other arrays likewise as one block, then the trimmed mean aggregates the mixed
  updates. Regions' honest updates are nearly orthogonal (heterogeneous data), so a silo sending its update
  negated looks like any other outlier to a per-coordinate rule; mixing averages the heterogeneity away first.
  Per row, not per whole update: a push on one item hidden in an otherwise ordinary (or empty) update sits in
  every whole-update neighbourhood (red team 3: 100% of honest users on the global model), but far from every
  honest silo on its row. Each silo's `excluded_by` (how many other silos' neighbourhoods left it out, averaged
  over rows) is recorded; it flags the different as well as the hostile (the largest region is often left out).

None applies to a statistics model (the coordinator solves the silos' summed statistics) or under SecAgg+
(it sees only the sum), and row clipping is not applied to DP releases (not measured there): there the
region-side guard (`fedrec.silo.guard`, on by default) is the defence. The default is `none`. Measured with the
guard (`simulations/README.md`): on ML-100K and the default world row clipping removes the damage a boost does to
training at no clean cost, but on a 3-silo world it makes a push on items the honest regions support look like
an ordinary move to their guards (two targets reach 18% of a region's users; 0% without it).

`attribution` records, per round, the items whose rows moved most and each contributor's share of each move
(kept in the run's history, where the coordinator already sees every update).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fedrec.messages import WEIGHT_KEY, read_arrays, read_float, read_region

Arrays = dict[str, np.ndarray]


def row_tables(arrays: Arrays, n_items: int) -> list[str]:
    """The arrays holding one row per item (first dimension = catalog size), in the arrays' order."""
    return [k for k, v in arrays.items() if v.ndim >= 1 and v.shape[0] == n_items]


def _row_norms(delta: Arrays, names: list[str]) -> np.ndarray:
    """[items] the norm of each item's change over every row table."""
    return np.sqrt(sum(np.sum(delta[k].reshape(len(delta[k]), -1) ** 2, axis=1) for k in names))  # type: ignore[return-value]


def _deltas(sent: Arrays, replies: list[Message], names: list[str]) -> list[Arrays]:
    out = []
    for m in replies:
        got = read_arrays(m.content)
        out.append({k: got[k].astype(np.float64) - sent[k].astype(np.float64) for k in names})
    return out


@dataclass(frozen=True)
class RowClip:
    """What `clip_rows` did in one round: rows clipped per region, and the floor of the bound."""

    clipped: dict[str, int]
    floor: float


def clip_rows(sent: Arrays, replies: list[Message], *, n_items: int, clip: float) -> RowClip:
    """Clip, in place in each reply, every silo's change to each item row (see the module docstring).

    `sent` is the global arrays the round trained from. Replies whose rows are all within bound are untouched.
    """
    names = row_tables(sent, n_items)
    if len(replies) < 3 or not names:
        return RowClip({read_region(m.content): 0 for m in replies}, 0.0)
    deltas = _deltas(sent, replies, names)
    norms = np.stack([_row_norms(d, names) for d in deltas])  # [silos, items]
    ref = np.median(norms, axis=0)
    floor = float(np.median(ref))
    bound = clip * np.maximum(ref, floor)
    scale = np.minimum(1.0, bound / np.maximum(norms, 1e-300))
    clipped: dict[str, int] = {}
    for m, d, sc in zip(replies, deltas, scale, strict=True):
        n = int(np.sum(sc < 1.0))
        clipped[read_region(m.content)] = n
        if n == 0:
            continue
        record = m.content.array_records["arrays"]
        out = {}
        for k, v in record.items():
            a = v.numpy()
            if k in names:
                shape = (-1,) + (1,) * (a.ndim - 1)
                a = (sent[k].astype(np.float64) + d[k] * sc.reshape(shape)).astype(a.dtype)
            out[k] = Array(np.ascontiguousarray(a))
        m.content.array_records["arrays"] = ArrayRecord(out)
    return RowClip(clipped, floor)


def _mix_units(x: np.ndarray, keep: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mix each unit (a row) of x [silos, units, cols] over the `keep` silos nearest on that unit.

    Returns the mixed array (each silo's unit: the mean of the `keep` silos' units nearest to it, itself included)
    and, per silo, how many other silos' neighbourhoods left it out, averaged over units.
    """
    n, units, _ = x.shape
    out = np.empty_like(x)
    excluded = np.zeros(n)
    for lo in range(0, units, chunk):
        xu = np.ascontiguousarray(x[:, lo:lo + chunk].transpose(1, 0, 2))  # [u, silos, cols]
        gram = xu @ xu.transpose(0, 2, 1)
        sq = np.einsum("uii->ui", gram)
        dist = sq[:, :, None] + sq[:, None, :] - 2 * gram
        near = np.argsort(dist, axis=2, kind="stable")[:, :, :keep]  # ties: reply order
        w = np.zeros_like(dist)
        np.put_along_axis(w, near, 1.0 / keep, axis=2)  # w[u, i, j]: weight of silo j in silo i's mix
        out[:, lo:lo + chunk] = (w @ xu).transpose(1, 0, 2)
        excluded += np.sum(w == 0, axis=(0, 1))  # summed over units and the silos whose neighbourhood it is
    return out, excluded / units


def mix_nearest(sent: Arrays, replies: list[Message], *, f: int, n_items: int) -> dict[str, float]:
    """Nearest-neighbour mixing, in place in each reply (see the module docstring); returns `excluded_by`.

    Mixed per item row (the item's entries in every array with one row per item: bias and embedding) and once
    for the remaining arrays as one block, so a silo whose update is ordinary everywhere but on one item's row is
    left out of the neighbourhoods of that row. Distances are Euclidean in float64; ties are broken by reply
    order, so the result does not depend on timing. `excluded_by`: per silo, how many other silos'
    neighbourhoods left it out, averaged over the rows and the block. With f = 0 (or fewer than 3 replies)
    nothing is mixed.
    """
    regions = [read_region(m.content) for m in replies]
    if f < 1 or len(replies) < 3:
        return {r: 0.0 for r in regions}
    names = list(sent)
    rows = row_tables(sent, n_items)
    rest = [k for k in names if k not in rows]
    deltas = _deltas(sent, replies, names)
    keep, excluded, blocks = len(replies) - f, np.zeros(len(replies)), 0
    mixed: list[Arrays] = [{} for _ in replies]
    if rows:
        table = np.stack([np.concatenate([d[k].reshape(n_items, -1) for k in rows], axis=1) for d in deltas])
        out, ex = _mix_units(table, keep)
        excluded, blocks, col = excluded + ex * n_items, blocks + n_items, 0
        for k in rows:
            width = int(np.prod(sent[k].shape[1:]))
            for i in range(len(replies)):
                mixed[i][k] = out[i, :, col:col + width].reshape(sent[k].shape)
            col += width
    if rest:
        flat = np.stack([np.concatenate([d[k].ravel() for k in rest]) for d in deltas])[:, None, :]
        out, ex = _mix_units(flat, keep)
        excluded, blocks, offset = excluded + ex, blocks + 1, 0
        for k in rest:
            for i in range(len(replies)):
                mixed[i][k] = out[i, 0, offset:offset + sent[k].size].reshape(sent[k].shape)
            offset += sent[k].size
    for m, mix in zip(replies, mixed, strict=True):
        record = m.content.array_records["arrays"]
        m.content.array_records["arrays"] = ArrayRecord({
            k: Array(np.ascontiguousarray((sent[k].astype(np.float64) + mix[k]).astype(record[k].numpy().dtype)))
            for k in names})
    return {r: round(float(e / blocks), 3) for r, e in zip(regions, excluded, strict=True)}


def attribution(sent: Arrays, replies: list[Message], *, n_items: int, top: int = 5) -> list[dict[str, object]]:
    """The `top` items whose rows the replies' weighted mean moved most, each with every contributor's share.

    Share of silo i in item j's move = w_i <d_ij, m_j> / |m_j|^2 with m_j = sum_i w_i d_ij (weights summing to
    one): shares sum to 1; a silo pushing against the others has a negative share. This is the move before
    any server learning rate or momentum, on the replies as aggregated (after clipping).
    """
    names = row_tables(sent, n_items)
    if not replies or not names:
        return []
    deltas = _deltas(sent, replies, names)
    w = np.array([read_float(m.content, "metrics", WEIGHT_KEY) for m in replies])
    w = w / w.sum() if w.sum() > 0 else np.full(len(replies), 1 / len(replies))
    flat = [np.concatenate([d[k].reshape(n_items, -1) for k in names], axis=1) for d in deltas]  # [items, cols]
    mean = sum(wi * f for wi, f in zip(w, flat, strict=True))
    assert isinstance(mean, np.ndarray)
    moved = np.sqrt(np.sum(mean**2, axis=1))
    items = np.argsort(-moved, kind="stable")[:top]
    regions = [read_region(m.content) for m in replies]
    out: list[dict[str, object]] = []
    for j in items:
        denom = float(moved[j] ** 2)
        shares = {r: (float(wi * flat[i][j] @ mean[j]) / denom if denom > 0 else 0.0)
                  for i, (r, wi) in enumerate(zip(regions, w, strict=True))}
        out.append({"item": int(j), "moved": float(moved[j]), "shares": shares})
    return out
