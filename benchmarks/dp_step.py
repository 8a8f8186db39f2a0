"""Time of one user-level DP step for MF (closed-form per-user clipping) vs one plain training step.

Same model (5k users, 4k items, dim 64), same interactions per step: B sampled users with up to 30
interactions each, 256 shared negatives. Reports the ratio DP / plain (target <= 1.5x) and peak RSS growth.

Usage: python benchmarks/dp_step.py
"""

from __future__ import annotations

import platform
import resource
import time
from datetime import UTC, datetime

import torch

from fedrec.models.mf import BiasedMF
from fedrec.privacy.dp_mf import UserBatch, dp_mf_step
from fedrec.training import TrainConfig, batch_loss

N_USERS, N_ITEMS, DIM, PER_USER, K = 5000, 4000, 64, 30, 256


def make_batch(b: int, gen: torch.Generator) -> UserBatch:
    users = torch.randperm(N_USERS, generator=gen)[:b]
    owner = torch.arange(b).repeat_interleave(PER_USER)
    items = torch.randint(0, N_ITEMS, (b * PER_USER,), generator=gen)
    return UserBatch(users=users, owner=owner, items=items)


def timed(fn, repeats: int = 20) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    torch.set_num_threads(1)
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} torch {torch.__version__}, 1 thread")
    gen = torch.Generator().manual_seed(0)
    for b in (256, 1024):
        measure(b, gen)


def measure(b: int, gen: torch.Generator) -> None:
    batch = make_batch(b, gen)
    negatives = torch.randint(0, N_ITEMS, (K,), generator=gen)
    model = BiasedMF(N_USERS, N_ITEMS, DIM)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    cfg = TrainConfig(n_negatives=K, batch_size=b * PER_USER)
    u = batch.users[batch.owner]

    def plain() -> None:
        loss = batch_loss(model, u, batch.items, torch.ones(len(u)), n_items=N_ITEMS, cfg=cfg, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    local = [p for n, p in model.named_parameters() if n.startswith("user.")]
    glob = [model.item_emb.weight, model.item_bias.weight, model.global_bias]
    opt_l, opt_g = torch.optim.Adam(local, lr=0.01), torch.optim.Adam(glob, lr=0.01)

    def dp() -> None:
        dp_mf_step(model, batch, negatives, clip_norm=1.0, noise_multiplier=1.0, expected_users=b,
                   global_optimizer=opt_g, local_optimizer=opt_l, generator=gen)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_plain = timed(plain)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_dp = timed(dp)
    rss2 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"batch {b} users ({b * PER_USER} interactions): plain {t_plain * 1e3:.1f} ms, DP {t_dp * 1e3:.1f} ms, "
          f"ratio {t_dp / t_plain:.2f}x; peak RSS growth plain {(rss1 - rss0) / 1024:.0f} MB, "
          f"then DP {(rss2 - rss1) / 1024:.0f} MB")

if __name__ == "__main__":
    main()
