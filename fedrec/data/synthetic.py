"""A synthetic sovereign world: jurisdictions of unequal size that share tastes but differ.

Why synthetic: it needs no download, is deterministic by seed, and lets experiments dial exactly what makes
federation worth it (small silos, a shared catalog) and what makes it hard (regional taste shift,
region-only items). Generation is vectorised: users are drawn in blocks and their items chosen with the
Gumbel-top-k trick (sampling without replacement from a softmax) in one matrix operation per block.

Public item features (`item_features` > 0): a noisy random projection of each item's latent factors onto
`item_features` binary tags (or a dense vector), drawn from their own random stream, so turning them on or
changing their noise never changes the interactions of a seed. They are what a public catalog's metadata
is in real data (genres, tags, a release year): informative about tastes, but only partly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedrec.data.schema import Catalog, Interactions, LoadReport, make_interactions
from fedrec.errors import ConfigError

DEFAULT_REGION_NAMES = ("eu", "na", "apac", "latam", "mena", "africa", "oceania", "caribbean")
FEATURE_KINDS = ("binary", "dense")
_FEATURE_STREAM = 0x5EED_FEA7  # the features' own random stream: (seed, this) never touches the interactions'
_TAG_THRESHOLD = 1.0  # a binary tag is on when its standardised noisy projection exceeds this (~16% of items)


@dataclass(frozen=True)
class SyntheticWorldConfig:
    """Sizes and shape of a synthetic world; every field has a sensible default.

    `region_sizes` are relative user shares; the default (5 regions) makes the smallest 10x smaller than
    the largest. `region_shift` scales how far each region's tastes move away from the shared ones;
    `region_shift_scale` (one factor per region, default all 1) makes some regions differ more than others.
    `item_features` public item features (0: none) of `item_feature_kind` "binary" (tags) or "dense", each a
    random projection of the item's latent factors plus Gaussian noise of `item_feature_noise` times the
    signal's standard deviation (0: exact; large: nearly pure noise).
    """

    n_users: int = 6000
    n_items: int = 1500
    region_only_items: int = 60
    region_sizes: tuple[float, ...] = (10.0, 6.0, 3.0, 1.5, 1.0)
    region_names: tuple[str, ...] = ()
    dim: int = 16
    region_shift: float = 0.5
    region_shift_scale: tuple[float, ...] = ()
    popularity_exponent: float = 0.9
    popularity_weight: float = 0.5
    taste_temperature: float = 3.0
    mean_interactions: float = 40.0
    min_interactions: int = 8
    max_interactions: int = 300
    item_features: int = 32
    item_feature_kind: str = "binary"
    item_feature_noise: float = 1.0
    seed: int = 0
    _names: tuple[str, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        checks = [
            (self.n_users >= 2 * len(self.region_sizes), "n_users", "at least 2 users per region"),
            (self.n_items >= 1, "n_items", "at least 1"),
            (self.region_only_items >= 0, "region_only_items", ">= 0"),
            (len(self.region_sizes) >= 1, "region_sizes", "at least one region"),
            (all(s > 0 for s in self.region_sizes), "region_sizes", "all shares > 0"),
            (self.dim >= 1, "dim", ">= 1"),
            (self.mean_interactions >= self.min_interactions >= 1, "min_interactions",
             "1 <= min_interactions <= mean_interactions"),
            (self.max_interactions >= self.min_interactions, "max_interactions", ">= min_interactions"),
            (not self.region_shift_scale or len(self.region_shift_scale) == len(self.region_sizes),
             "region_shift_scale", "one factor per region (as many as region_sizes)"),
            (all(f >= 0 for f in self.region_shift_scale or ()), "region_shift_scale", "factors >= 0"),
            (self.item_features >= 0, "item_features", ">= 0 (0: no item features)"),
            (self.item_feature_kind in FEATURE_KINDS, "item_feature_kind", f"one of {FEATURE_KINDS}"),
            (self.item_feature_noise >= 0, "item_feature_noise", ">= 0"),
        ]
        for ok, key, need in checks:
            if not ok:
                raise ConfigError(f"dataset.{key}={getattr(self, key)!r} is invalid: need {need}")
        names = self.region_names or _default_names(len(self.region_sizes))
        if len(set(names)) != len(names):
            raise ConfigError(f"dataset.region_names={list(names)} has duplicates: each region needs its own name")
        if len(names) != len(self.region_sizes):
            raise ConfigError(
                f"dataset.region_names has {len(names)} names but dataset.region_sizes has "
                f"{len(self.region_sizes)} entries: give one name per region"
            )
        object.__setattr__(self, "_names", tuple(names))
        if self.max_interactions > self.n_items:
            object.__setattr__(self, "max_interactions", self.n_items)

    @property
    def names(self) -> tuple[str, ...]:
        """Region names, defaulted when not given."""
        return self._names


def _default_names(n: int) -> tuple[str, ...]:
    if n <= len(DEFAULT_REGION_NAMES):
        return DEFAULT_REGION_NAMES[:n]
    return tuple(f"region{i}" for i in range(n))


def users_per_region(cfg: SyntheticWorldConfig) -> np.ndarray:
    """Split `n_users` by the relative shares, every region getting at least 2 users."""
    shares = np.asarray(cfg.region_sizes, dtype=np.float64)
    counts = np.floor(cfg.n_users * shares / shares.sum()).astype(np.int64)
    counts = np.maximum(counts, 2)
    counts[np.argmax(counts)] += cfg.n_users - counts.sum()
    return counts


@dataclass(frozen=True)
class _Items:
    """Every item's latent factors, log-popularity and owner (-1: global, else the one region offering it)."""

    vec: np.ndarray
    log_pop: np.ndarray
    owner: np.ndarray


@dataclass(frozen=True)
class _Users:
    """Every user's region, taste factors and number of interactions to draw."""

    region: np.ndarray
    vec: np.ndarray
    n_interactions: np.ndarray


def _draw_items(cfg: SyntheticWorldConfig, rng: np.random.Generator) -> tuple[_Items, np.ndarray]:
    """Items (power-law popularity in random rank order) and each region's taste shift.

    Region-only items lean toward their region's shift. Returns the items and the shifts (regions x dim).
    """
    n_regions = len(cfg.region_sizes)
    n_items_total = cfg.n_items + n_regions * cfg.region_only_items
    d = cfg.dim
    item_vec = rng.standard_normal((n_items_total, d)) / np.sqrt(d)
    ranks = rng.permutation(n_items_total) + 1
    log_pop = -cfg.popularity_exponent * np.log(ranks)
    owner = np.full(n_items_total, -1, dtype=np.int64)  # -1: global item, else the owning region
    shifts = rng.standard_normal((n_regions, d)) / np.sqrt(d) * cfg.region_shift
    if cfg.region_shift_scale:
        shifts *= np.asarray(cfg.region_shift_scale, dtype=np.float64)[:, None]
    for r in range(n_regions):
        lo = cfg.n_items + r * cfg.region_only_items
        hi = lo + cfg.region_only_items
        owner[lo:hi] = r
        item_vec[lo:hi] += 2.0 * shifts[r]
    return _Items(vec=item_vec, log_pop=log_pop, owner=owner), shifts


def _draw_users(cfg: SyntheticWorldConfig, rng: np.random.Generator, shifts: np.ndarray) -> _Users:
    """Users: region membership by share, tastes = shared + region shift, a log-normal history length."""
    counts = users_per_region(cfg)
    user_region = np.repeat(np.arange(len(cfg.region_sizes)), counts)
    user_vec = rng.standard_normal((cfg.n_users, cfg.dim)) / np.sqrt(cfg.dim) + shifts[user_region]
    n_per_user = np.clip(
        rng.lognormal(np.log(cfg.mean_interactions) - 0.32, 0.8, size=cfg.n_users).round(),
        cfg.min_interactions,
        cfg.max_interactions,
    ).astype(np.int64)
    return _Users(region=user_region, vec=user_vec, n_interactions=n_per_user)


def _draw_block(
    cfg: SyntheticWorldConfig, rng: np.random.Generator, items: _Items, users: _Users, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users `start..stop-1`'s items by Gumbel-top-k over their available items: (user, item, affinity).

    Written to allocate few [block, n_items] arrays (the cost of large catalogs); every operation gives the
    same floating-point values, in the same random-draw order, as the plain formula
    `top-k(temperature * affinity + popularity_weight * log_pop + Gumbel)`.
    """
    regs = users.region[start:stop]
    affinity = users.vec[start:stop] @ items.vec.T
    affinity *= np.sqrt(cfg.dim)  # ~unit-scale scores
    logits = cfg.taste_temperature * affinity
    logits += cfg.popularity_weight * items.log_pop
    # Other regions' region-only items are not available to these users.
    owned = np.flatnonzero(items.owner >= 0)
    if owned.size:
        cols = logits[:, owned]
        cols[items.owner[owned][None, :] != regs[:, None]] = -np.inf
        logits[:, owned] = cols
    perturbed = rng.gumbel(size=logits.shape)
    perturbed += logits
    del logits
    n_per_user = users.n_interactions[start:stop]
    k = int(n_per_user.max())
    n_all = perturbed.shape[1]
    top = np.argpartition(perturbed, n_all - k, axis=1)[:, n_all - k:]
    # argpartition leaves the k winners unordered: sort them so each user keeps its own best n_u.
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(perturbed, top, 1), axis=1), 1)
    keep = np.arange(k)[None, :] < n_per_user[:, None]
    rows = np.broadcast_to(np.arange(start, stop)[:, None], top.shape)
    return rows[keep], top[keep], affinity[rows[keep] - start, top[keep]]


def latent_item_factors(cfg: SyntheticWorldConfig) -> np.ndarray:
    """The world's latent item factors [n_items, dim] (hidden from every party; for tests and studies)."""
    return _draw_items(cfg, np.random.default_rng(cfg.seed))[0].vec


def item_features(cfg: SyntheticWorldConfig, item_vec: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """Public item features from latent factors: a noisy random projection, as tags or a dense vector.

    z = item_vec · W · sqrt(dim) / |W's column| (about unit variance per feature) plus `item_feature_noise`
    times unit Gaussian noise, standardised back to unit variance; "binary" keeps z > 1 as a tag (about 16%
    of items carry each tag), "dense" keeps z. Drawn from the seed's own feature stream. None when
    `item_features` is 0.
    """
    if cfg.item_features == 0:
        return None
    rng = np.random.default_rng([cfg.seed, _FEATURE_STREAM])
    proj = rng.standard_normal((cfg.dim, cfg.item_features))
    proj /= np.linalg.norm(proj, axis=0, keepdims=True)
    z = item_vec @ proj * np.sqrt(cfg.dim)
    z += cfg.item_feature_noise * rng.standard_normal(z.shape)
    z /= np.sqrt(1.0 + cfg.item_feature_noise**2)
    width = len(str(cfg.item_features - 1))
    if cfg.item_feature_kind == "binary":
        return (z > _TAG_THRESHOLD).astype(np.float32), tuple(f"tag{j:0{width}d}" for j in range(cfg.item_features))
    return z.astype(np.float32), tuple(f"f{j:0{width}d}" for j in range(cfg.item_features))


def generate_world(cfg: SyntheticWorldConfig, *, block: int = 2048) -> Interactions:
    """Generate the world's interactions (implicit feedback with a 1-5 affinity rating) by seed.

    Items: `n_items` global items plus `region_only_items` per region (available only to that region's
    users). Item popularity follows a power law; users' tastes are shared latent factors plus their
    region's shift, and region-only items lean toward their region's shift, so pooling data helps learn
    the global items while regions still differ. The catalog carries the public item features
    (`item_features`), when configured.
    """
    rng = np.random.default_rng(cfg.seed)
    items, shifts = _draw_items(cfg, rng)
    users = _draw_users(cfg, rng, shifts)
    blocks = [
        _draw_block(cfg, rng, items, users, start, min(start + block, cfg.n_users))
        for start in range(0, cfg.n_users, block)
    ]
    user, item, aff = (np.concatenate(part) for part in zip(*blocks, strict=True))
    rating = np.clip(np.round(3.0 + (aff - aff.mean()) / (aff.std() + 1e-9)), 1, 5)
    # Timestamps: each user's interactions are spread over time in a random order.
    timestamp = 1_600_000_000 + rng.integers(0, 86_400 * 365, size=len(user))
    names = np.asarray(cfg.names)
    features = item_features(cfg, items.vec)
    catalog = Catalog(
        n_items=len(items.owner), source="synthetic generator (public)",
        features=None if features is None else features[0], feature_names=None if features is None else features[1],
    )
    report = LoadReport(source=f"synthetic world (seed {cfg.seed})", rows_read=len(user))
    return make_interactions(
        user=user,
        item=item,
        rating=rating,
        timestamp=timestamp,
        region_names=names[users.region[user]],
        catalog=catalog,
        explicit=False,
        report=report,
        region_order=list(cfg.names),
    )
