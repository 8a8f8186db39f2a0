"""Red-team helpers (tests only): crafted co-silo replies and coordinator messages on the in-process grid."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fakegrid import run_in_process
from flwr.app import Array, ArrayRecord, Context, Message

from fedrec.config import experiment_from_dict
from fedrec.data.split import SiloData
from fedrec.experiment import run_experiment
from fedrec.exposure import ITEM_BIAS
from fedrec.flower.egress_recorder import Mod
from fedrec.flower.hostile_mods import hostile_mod, norm_of
from fedrec.messages import WEIGHT_KEY, read_region

EMB = "item_emb.weight"
DATASET = {"name": "synthetic", "n_users": 600, "n_items": 120, "region_only_items": 6,
           "region_sizes": [2.0, 1.0, 1.0], "seed": 5}


def experiment(out: Path, mods: list[Mod], *, rounds: int = 4, dataset: dict[str, Any] | None = None,
               **overrides: Any) -> dict[str, Any]:
    cfg = experiment_from_dict({"dataset": dataset or DATASET, "model": {"name": "mf", "dim": 8},
                                "federation": {"rounds": rounds}, "train": {"n_negatives": 32}, "bounds": [],
                                "baselines": [], **overrides})
    return run_experiment(cfg, out, log=lambda *_: None, engine=functools.partial(run_in_process, client_mods=mods))


def silo(out: Path, region: str) -> SiloData:
    return SiloData.load(out / "world" / f"silo_{region}.npz")


def support(out: Path, region: str) -> np.ndarray:
    s = silo(out, region)
    return np.bincount(s.train[1], minlength=s.n_items)


def supported(out: Path, region: str, quantile: float = 0.5) -> np.ndarray:
    c = support(out, region)
    return c > np.quantile(c, quantile)


def decisions(out: Path, region: str) -> list[dict[str, Any]]:
    path = out / "silo-state" / region / "serving" / "adoption.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def multi_boost(region: str | Sequence[str], items: Sequence[int], multiple: float, *, row_share: float = 0.0
                ) -> Mod:
    """Push every target's bias (and, with row_share, its embedding row towards the popular items' mean row)
    by the same amount, so that the reply's update norm is `multiple` x the honest one."""
    items = list(items)

    def attack(reply: dict[str, np.ndarray], sent: dict[str, np.ndarray], _r: str, _n: int) -> dict[str, np.ndarray]:
        s64 = {k: v.astype(np.float64) for k, v in sent.items()}
        delta = {k: reply[k].astype(np.float64) - s64[k] for k in reply}
        direction = {k: np.zeros_like(v) for k, v in delta.items()}
        top = np.argsort(-s64[ITEM_BIAS].reshape(-1), kind="stable")[:50]
        towards = s64[EMB][top].mean(0)
        towards = towards / np.linalg.norm(towards)
        for j in items:
            direction[ITEM_BIAS][j] = math.sqrt(1 - row_share)
            direction[EMB][j] = math.sqrt(row_share) * towards
        scale = norm_of(direction)
        direction = {k: v / scale for k, v in direction.items()}
        along = sum(float(np.sum(delta[k] * d)) for k, d in direction.items())
        honest = norm_of(delta)
        step = -along + math.sqrt(max(along**2 + (multiple * honest) ** 2 - honest**2, 0.0))
        return {k: (s64[k] + delta[k] + step * direction[k]).astype(reply[k].dtype) for k in reply}

    return hostile_mod(region, attack)


def claim_weight(region: str, weight: float) -> Mod:
    """The silo's training replies claim aggregation weight `weight` (the screen only checks it is finite > 0)."""
    def mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, ctx)
        if (msg.metadata.message_type == "train" and reply.has_content() and "metrics" in reply.content.metric_records
                and read_region(reply.content) == region):
            reply.content.metric_records["metrics"][WEIGHT_KEY] = float(weight)
        return reply
    return mod


def coordinator(rewrite: Callable[[Message, Context], Message | None]) -> Mod:
    """A hostile coordinator: `rewrite` changes (in place) or replaces each message before the silo reads it."""
    def mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        out = rewrite(msg, ctx)
        return call_next(out if out is not None else msg, ctx)
    return mod


def set_arrays(msg: Message, arrays: dict[str, np.ndarray]) -> None:
    msg.content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def served_exposure_all(out: Path, *, served: bool = True, k: int = 20) -> dict[str, np.ndarray]:
    """Every item's top-k exposure among each region's test users, as `exposure_from_run` scores one item."""
    import torch
    from safetensors.numpy import load_file

    from fedrec.adoption_policy import AdoptionPolicy
    from fedrec.metrics import ranked_top_k, withheld_pairs
    from fedrec.model_io import load_global_model
    from fedrec.run_exposure import run_settings
    from fedrec.settings import read_manifest, silo_state_root
    from fedrec.silo.round import silo_seed
    from fedrec.silo.serving import RegionServing
    from fedrec.silo.state import LOCAL_STATE_KEY
    from fedrec.silo.state_dir import StateDir
    from fedrec.training import fitted_model

    settings = run_settings(out)
    history = json.loads((out / "federated_history.json").read_text())
    run_key, last_round = str(history["run_id"]), int(history["rounds"][-1]["round"])
    global_arrays, spec, _ = load_global_model(out / "global_model.safetensors")
    root = silo_state_root(settings)
    assert root is not None
    result = {}
    for region in read_manifest(settings.data_dir)["regions"]:
        s = SiloData.load(Path(settings.data_dir) / f"silo_{region}.npz")
        state = StateDir(root / region).run(run_key) / f"{LOCAL_STATE_KEY}.safetensors"
        local = {n: torch.as_tensor(v) for n, v in load_file(str(state)).items()}
        arrays, withheld = global_arrays, None
        if served:
            serving = RegionServing(root / region, AdoptionPolicy())
            stored = serving.served_model()
            if stored is not None:
                arrays, local, withheld = stored[1], stored[2] if stored[2] is not None else local, serving.withheld()
        model = fitted_model(spec, s, arrays, local, settings.train_config(), seed=silo_seed(settings.seed, region,
                                                                                              last_round))
        model.eval()
        users = np.unique(s.test[0])
        counts = np.zeros(s.n_items)
        for batch in ranked_top_k(model.score_all, n_items=s.n_items, users=users,
                                  exclude=[s.train[:2], s.valid[:2], *withheld_pairs(users, withheld)], k=k):
            np.add.at(counts, batch.top[batch.shown()].numpy(), 1)
        result[region] = counts / len(users)
    return result


def common_mode_boost(region: str | Sequence[str], items: Sequence[int], multiple: float, *, ratio: float = 8.0
                      ) -> Mod:
    """Add the same constant c to *every* item's bias (rank-invariant for MF: score = ... + b_i) and (ratio + 1) x c
    to each target's, with c sized so the reply's update norm is about `multiple` x the honest one. The constant
    sets every row's jump, hence the guard's median: the targets' jump stays under k x the median (k = 10)."""
    items = list(items)

    def attack(reply: dict[str, np.ndarray], sent: dict[str, np.ndarray], _r: str, _n: int) -> dict[str, np.ndarray]:
        s64 = {k: v.astype(np.float64) for k, v in sent.items()}
        delta = {k: reply[k].astype(np.float64) - s64[k] for k in reply}
        shape = np.ones(delta[ITEM_BIAS].shape[0])
        shape[items] += ratio
        c = multiple * norm_of(delta) / math.sqrt(float(np.sum(shape**2)))
        delta[ITEM_BIAS] = delta[ITEM_BIAS] + c * shape.reshape(delta[ITEM_BIAS].shape)
        return {k: (s64[k] + delta[k]).astype(reply[k].dtype) for k in reply}

    return hostile_mod(region, attack)


def push_only(region: str | Sequence[str], item: int, kappa: float) -> Mod:
    """Send *only* a push on `item`'s bias, `kappa` x the silo's honest update norm, and none of the honest update.

    Regions' honest updates are nearly orthogonal (heterogeneous data), so their centre is near zero: a reply of
    zero plus a push of about one honest norm is nearer each honest silo than its farthest honest peer, and so in
    every nearest-neighbour mixing neighbourhood ("a little is enough", with no knowledge of the others)."""
    def attack(reply: dict[str, np.ndarray], sent: dict[str, np.ndarray], _r: str, _n: int) -> dict[str, np.ndarray]:
        s64 = {k: v.astype(np.float64) for k, v in sent.items()}
        honest = norm_of({k: reply[k].astype(np.float64) - s64[k] for k in reply})
        out = {k: v.copy() for k, v in s64.items()}
        out[ITEM_BIAS][item] += kappa * honest
        return {k: out[k].astype(reply[k].dtype) for k in reply}

    return hostile_mod(region, attack)


def send_line_head(msg: Message, registry_root: Path, line: str, *, lineage: bool = False) -> None:
    """Put line `line`'s head into `msg` as the version it sends, declared (and with `lineage`, its ancestry)."""
    from fedrec.messages import MODEL_IDENTITY_KEY, MODEL_LINEAGE_KEY
    from fedrec.versions import ModelRegistry

    config = msg.content.config_records["config"]
    registry = ModelRegistry(registry_root, create=False)
    head = max((v for v in registry.list() if v.coalition == line), key=lambda v: v.round)
    arrays, _ = registry.load(head.id)
    msg.content.array_records["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    config["model-version"] = head.id
    config[MODEL_IDENTITY_KEY] = json.dumps(head.identity(), sort_keys=True)
    if lineage:
        config[MODEL_LINEAGE_KEY] = json.dumps([v.identity() for v in registry.lineage(head.id)[1:]], sort_keys=True)
