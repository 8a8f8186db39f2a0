"""Where a silo's DP randomness comes from: the OS CSPRNG, always, unless a researcher asks in Python.

Both the Gaussian noise and the Poisson sampling of users must be secret for the guarantee to hold: an
observer who can predict the noise subtracts it, one who can predict the sample knows who was in a step.
`secure` (the only source a silo uses on its own) draws every bit from `os.urandom` (the kernel CSPRNG)
and turns it into normals with Box-Muller; each output is the mean of two such normals scaled by √2, the
mitigation Opacus' secure mode uses against floating-point attacks on naive Gaussian samplers (Mironov,
CCS 2012). Nothing outside the silo can seed it.

`seeded` (a torch generator) exists for in-process research and tests only: it is reachable through a
Python argument (`make_client_app(..., reproducible_noise=True)`, `run_simulation(...)`), never through
the run config a coordinator sends, and a silo with a node-config budget refuses it.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

NOISE_SOURCES = ("seeded", "secure")


class NoiseSource:
    """Gaussian noise and uniform draws for DP steps; `kind` is `seeded` or `secure`."""

    def __init__(self, kind: str = "secure", *, seed: int = 0) -> None:
        if kind not in NOISE_SOURCES:
            raise ValueError(f"privacy noise source {kind!r} is unknown; choose one of {NOISE_SOURCES}")
        self.kind = kind
        self.generator = torch.Generator().manual_seed(seed)

    def uniform(self, n: int) -> torch.Tensor:
        """`n` floats uniform in [0, 1) (float64 from the CSPRNG when secure)."""
        if self.kind == "seeded":
            return torch.rand(n, generator=self.generator)
        return torch.from_numpy(_urandom_uniform(n))

    def normal(self, shape: tuple[int, ...] | torch.Size, std: float, *,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Gaussian noise N(0, std²) of `shape`, float32 unless `dtype` says float64.

        Noise that is added to float64 sums should be drawn in float64: float32 noise lies on float32's grid
        at its own magnitude, and where the noisy sum cancels to much less than the noise its float32 rounding
        keeps the sum's low bits (the true sums fit that grid exactly, a neighbour's only by chance).
        """
        if self.kind == "seeded":
            return std * torch.randn(shape, generator=self.generator, dtype=dtype)
        n = math.prod(shape)
        z = (_urandom_normal(n) + _urandom_normal(n)) / math.sqrt(2.0)
        return torch.from_numpy(std * z).to(dtype).reshape(shape)


def _urandom_uniform(n: int) -> np.ndarray:
    """53-bit uniforms in [0, 1) from the kernel CSPRNG."""
    bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
    return bits.astype(np.float64) * (1.0 / (1 << 53))


def _urandom_normal(n: int) -> np.ndarray:
    """Standard normals by Box-Muller over CSPRNG uniforms (1 - u keeps the log finite)."""
    m = (n + 1) // 2
    u1 = 1.0 - _urandom_uniform(m)
    u2 = _urandom_uniform(m)
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])
    return z[:n]
