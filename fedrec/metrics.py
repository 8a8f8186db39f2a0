"""Full-ranking metrics: every catalog item the user has not interacted with in training is a candidate.

No sampled negatives (they inflate and reorder results). Per-user values are returned so callers can
average per region and overall (user-weighted) without re-scoring. Definitions (as in RecBole/LightGCN):
Recall@K = hits in top K / |test items|; NDCG@K = DCG@K / ideal DCG@K over min(|test|, K) items;
HR@K = 1 if any test item is in the top K.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

METRICS = ("ndcg@20", "recall@20", "hr@10", "ndcg@10")


def topk_metrics(hits: torch.Tensor, n_relevant: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-user metrics from a [U, K>=20] boolean hit matrix (ranked) and each user's number of test items."""
    k = hits.shape[1]
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    h = hits.to(torch.float64)
    out: dict[str, torch.Tensor] = {}
    for cut in (10, 20):
        dcg = (h[:, :cut] * discounts[:cut]).sum(1)
        ideal_n = torch.clamp(n_relevant, max=cut)
        idcg = torch.cumsum(discounts[:cut], 0)[(ideal_n - 1).clamp(min=0)]
        out[f"ndcg@{cut}"] = torch.where(n_relevant > 0, dcg / idcg, torch.zeros_like(dcg))
    n_rel = n_relevant.to(torch.float64).clamp(min=1)
    out["recall@20"] = h[:, :20].sum(1) / n_rel
    out["hr@10"] = (h[:, :10].sum(1) > 0).to(torch.float64)
    return {m: out[m] for m in METRICS}


@dataclass(frozen=True)
class RankedBatch:
    """One batch of users' top-k: `top[r]` are the item ids ranked for user `users[r]`, best first.

    `top_scores` are their scores; an item that was excluded scores -inf (it appears only when a user has fewer
    than k candidates) and must never count as recommended.
    """

    users: np.ndarray
    top: torch.Tensor
    top_scores: torch.Tensor

    def shown(self) -> torch.Tensor:
        """[B, k] boolean: which of the top-k slots hold a real candidate (not an excluded item)."""
        return torch.isfinite(self.top_scores)


def withheld_pairs(users: np.ndarray, withheld: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(user, item) pairs that keep `withheld` items (bool per item) from every one of `users`' rankings."""
    if withheld is None or not np.any(withheld):
        return []
    items = np.flatnonzero(withheld)
    return [(np.repeat(users, len(items)), np.tile(items, len(users)))]


def ranked_top_k(
    score_all: Callable[[torch.Tensor], torch.Tensor],
    *,
    n_items: int,
    users: np.ndarray,
    exclude: Iterable[tuple[np.ndarray, np.ndarray]],
    k: int = 20,
    batch_size: int = 512,
) -> Iterator[RankedBatch]:
    """Each (sorted, unique) user's top `min(k, n_items)` items over the whole catalog minus `exclude`, in batches.

    The one ranking every full-ranking number is computed from (`evaluate_full_ranking`, `fedrec.exposure`).
    """
    eval_users = np.asarray(users)
    exclude = list(exclude)
    ex_u = np.concatenate([np.asarray(u) for u, _ in exclude] or [np.zeros(0, np.int64)])
    ex_i = np.concatenate([np.asarray(i) for _, i in exclude] or [np.zeros(0, np.int64)])
    # Row of each evaluated user inside its batch, via a lookup over user ids.
    lookup = np.full(int(max(eval_users.max(initial=0), ex_u.max(initial=0))) + 1, -1, dtype=np.int64)
    lookup[eval_users] = np.arange(len(eval_users))
    ex_row = lookup[ex_u] if len(ex_u) else np.zeros(0, np.int64)
    k = min(k, n_items)
    with torch.no_grad():
        for start in range(0, len(eval_users), batch_size):
            stop = min(start + batch_size, len(eval_users))
            batch = torch.as_tensor(eval_users[start:stop], dtype=torch.long)
            scores = score_all(batch).to(torch.float32)
            sel = (ex_row >= start) & (ex_row < stop)
            scores[torch.as_tensor(ex_row[sel] - start), torch.as_tensor(ex_i[sel])] = -torch.inf
            top_scores, top = torch.topk(scores, k, dim=1)
            yield RankedBatch(users=eval_users[start:stop], top=top, top_scores=top_scores)


def evaluate_full_ranking(
    score_all: Callable[[torch.Tensor], torch.Tensor],
    *,
    n_items: int,
    targets: tuple[np.ndarray, np.ndarray],
    exclude: Iterable[tuple[np.ndarray, np.ndarray]],
    batch_size: int = 512,
) -> dict[str, np.ndarray]:
    """Per-user metrics for every user with at least one target, ranking all items not in `exclude`.

    `targets` and each `exclude` part are (user, item) arrays over the same user id space.
    Returns metric name → array over evaluated users (sorted by user id), plus "users".
    """
    t_users, t_items = targets
    eval_users = np.unique(t_users)
    lookup = np.full(int(t_users.max()) + 1, -1, dtype=np.int64)
    lookup[eval_users] = np.arange(len(eval_users))
    t_row = lookup[t_users]
    results: dict[str, list[torch.Tensor]] = {m: [] for m in METRICS}
    start = 0
    for ranked in ranked_top_k(score_all, n_items=n_items, users=eval_users, exclude=exclude, k=20,
                               batch_size=batch_size):
        stop = start + len(ranked.users)
        relevant = torch.zeros(stop - start, n_items, dtype=torch.bool)
        tsel = (t_row >= start) & (t_row < stop)
        relevant[torch.as_tensor(t_row[tsel] - start), torch.as_tensor(t_items[tsel])] = True
        # With fewer than k candidates, topk also returns excluded (-inf) items: never count those.
        hits = torch.gather(relevant, 1, ranked.top) & ranked.shown()
        if hits.shape[1] < 20:
            hits = torch.cat([hits, torch.zeros(hits.shape[0], 20 - hits.shape[1], dtype=torch.bool)], 1)
        per_user = topk_metrics(hits, relevant.sum(1))
        for m in METRICS:
            results[m].append(per_user[m])
        start = stop
    out = {m: torch.cat(v).numpy() if v else np.zeros(0) for m, v in results.items()}
    out["users"] = eval_users
    return out


def summarize(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of each metric over users (the user-weighted average)."""
    n = len(per_user["users"])
    return {m: float(per_user[m].mean()) if n else float("nan") for m in METRICS}


def rmse(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
         test: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[float, int]:
    """(sum of squared errors, count) on explicit ratings, so silos' values can be pooled exactly."""
    with torch.no_grad():
        pred = predict(torch.as_tensor(test[0], dtype=torch.long), torch.as_tensor(test[1], dtype=torch.long))
        err = pred - torch.as_tensor(test[2], dtype=torch.float32)
    return float((err**2).sum()), len(test[2])
