"""Time of one user-level DP step vs one plain training step, for MF (closed form) and two-tower.

Same sizes for both models (5k users, 4k items, dim 64; two-tower hidden 64), same interactions per step:
B sampled users with 30 interactions each, 256 shared negatives. "plain" is `fedrec.training.batch_loss`
+ backward + Adam on the same interactions; "DP" is the model's user-level DP step (per-user gradients,
clip, sum, Gaussian noise on every shared coordinate). Reports the ratio DP / plain of median step times
(calls interleaved; target <= 1.5x) and each step's peak RSS growth, measured alone in a fresh process (Linux
/proc): in one process, pages freed by an earlier phase are reused and hide a later phase's peak.

"MF secure" is the MF step with `privacy.noise=secure` (noise from os.urandom via Box-Muller).

Usage: python benchmarks/dp_step.py
"""

from __future__ import annotations

import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import torch

from fedrec.models.mf import BiasedMF
from fedrec.models.twotower import TwoTower
from fedrec.privacy.dp_mf import UserBatch, dp_mf_step
from fedrec.privacy.dp_twotower import dp_twotower_step, shared_parameters
from fedrec.privacy.noise import NoiseSource
from fedrec.training import TrainConfig, batch_loss

N_USERS, N_ITEMS, DIM, PER_USER, K = 5000, 4000, 64, 30, 256


def make_batch(b: int, gen: torch.Generator) -> UserBatch:
    users = torch.randperm(N_USERS, generator=gen)[:b]
    owner = torch.arange(b).repeat_interleave(PER_USER)
    items = torch.randint(0, N_ITEMS, (b * PER_USER,), generator=gen)
    return UserBatch(users=users, owner=owner, items=items)


def timed_pair(plain: Callable[[], object], dp: Callable[[], object], repeats: int = 20) -> tuple[float, float]:
    """Median seconds per call of each, calls interleaved so load drift on shared cores hits both alike."""
    for _ in range(3):
        plain(), dp()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, acc in zip((plain, dp), times, strict=True):
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def peak_rss_growth_mb(model: str, b: int, phase: str) -> float:
    """Peak RSS growth of `phase` in a fresh process (3 calls), over its RSS once the model and batch exist."""
    out = subprocess.run([sys.executable, __file__, "--peak", model, str(b), phase], check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+)", f.read()).group(1))  # type: ignore[union-attr]


def main() -> None:
    torch.set_num_threads(1)
    if len(sys.argv) == 5 and sys.argv[1] == "--peak":  # child: one phase's peak memory
        plain, dp = MEASURES[sys.argv[2]](int(sys.argv[3]), torch.Generator().manual_seed(0))
        fn, start = {"plain": plain, "dp": dp}[sys.argv[4]], _status_kb("VmRSS")
        for _ in range(3):
            fn()
        print((_status_kb("VmHWM") - start) / 1024)
        return
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} torch {torch.__version__}, 1 thread")
    gen = torch.Generator().manual_seed(0)
    for name, measure in MEASURES.items():
        for b in (256, 1024):
            t_plain, t_dp = timed_pair(*measure(b, gen))
            m_plain, m_dp = (peak_rss_growth_mb(name, b, phase) for phase in ("plain", "dp"))
            print(f"{name:9s} batch {b:4d} users ({b * PER_USER} interactions): plain {t_plain * 1e3:.1f} ms, "
                  f"DP {t_dp * 1e3:.1f} ms, ratio {t_dp / t_plain:.2f}x; "
                  f"peak RSS growth plain {m_plain:.0f} MB, DP {m_dp:.0f} MB")


Step = Callable[[], None]


def plain_step(model: BiasedMF | TwoTower, batch: UserBatch, b: int, gen: torch.Generator) -> Step:
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    cfg = TrainConfig(n_negatives=K, batch_size=b * PER_USER)
    u = batch.users[batch.owner]

    def plain() -> None:
        loss = batch_loss(model, u, batch.items, torch.ones(len(u)), n_items=N_ITEMS, cfg=cfg, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return plain


def measure_mf(b: int, gen: torch.Generator, noise_kind: str = "seeded") -> tuple[Step, Step]:
    batch = make_batch(b, gen)
    negatives = torch.randint(0, N_ITEMS, (K,), generator=gen)
    model = BiasedMF(N_USERS, N_ITEMS, DIM, private_item_bias=False)
    local = [p for n, p in model.named_parameters() if n.startswith("user.")]
    glob = [model.item_emb.weight, model.item_bias.weight, model.global_bias]
    opt_l, opt_g = torch.optim.Adam(local, lr=0.01), torch.optim.Adam(glob, lr=0.01)
    noise = NoiseSource(noise_kind, seed=0)

    def dp() -> None:
        dp_mf_step(model, batch, negatives, clip_norm=1.0, noise_multiplier=1.0, expected_users=b,
                   global_optimizer=opt_g, local_optimizer=opt_l, noise=noise)

    return plain_step(model, batch, b, gen), dp


def measure_twotower(b: int, gen: torch.Generator) -> tuple[Step, Step]:
    batch = make_batch(b, gen)
    negatives = torch.randint(0, N_ITEMS, (K,), generator=gen)
    model = TwoTower(N_USERS, N_ITEMS, DIM, private_item_bias=False)
    opt_s = torch.optim.Adam(shared_parameters(model).values(), lr=0.01)
    opt_u = torch.optim.Adam([model.user.emb.weight], lr=0.01)
    noise = NoiseSource("seeded", seed=0)

    def dp() -> None:
        dp_twotower_step(model, batch, negatives, clip_norm=1.0, noise_multiplier=1.0, expected_users=b,
                         shared_optimizer=opt_s, per_user_optimizer=opt_u, noise=noise)

    return plain_step(model, batch, b, gen), dp


def measure_mf_secure(b: int, gen: torch.Generator) -> tuple[Step, Step]:
    """MF with `privacy.noise=secure`: every noise coordinate from the OS CSPRNG."""
    return measure_mf(b, gen, "secure")


MEASURES: dict[str, Callable[[int, torch.Generator], tuple[Step, Step]]] = {
    "MF": measure_mf, "MF secure": measure_mf_secure, "two-tower": measure_twotower}

if __name__ == "__main__":
    main()
