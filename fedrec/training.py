"""Local training of a recommender on one set of interactions.

Silos, the centralized bound and the local-only bound all share this code, so the three result columns
differ only in whose data is used.

Losses for implicit feedback aim at full-ranking quality: BPR (one uniform negative per positive), sampled
softmax (each positive against K uniform negatives shared by the whole batch, so the negatives cost one
[B, d] x [d, K] matmul; accidental hits are masked) or full softmax (each positive against the whole
catalog, one [B, d] x [d, n_items] matmul through `score_all`: exact, and cheap while the catalog is small);
MSE on explicit ratings is an option.
Batches are index tensors sliced from one shuffled permutation per epoch: no Python loop per example.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedrec.data.split import SiloData
from fedrec.errors import ConfigError
from fedrec.models import ModelSpec, build_model, global_state, load_global_state
from fedrec.models.base import RecModel, is_local

Arrays = dict[str, np.ndarray]
Tensors = dict[str, torch.Tensor]
LOSSES = ("bpr", "softmax", "full_softmax", "mse")
PARAM_GROUPS = ("all", "local", "global")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings for one call of `train_epochs`.

    `loss`: one of `LOSSES`; `n_negatives` is the sampled softmax's K (the other losses ignore it).

    `refit_epochs`: before evaluation, user-side parameters are re-fitted for this many passes with the
    global (item-side) parameters frozen, so users match the item side being evaluated (all methods).
    """

    loss: str = "softmax"
    batch_size: int = 512
    lr: float = 0.01
    weight_decay: float = 1e-5
    n_negatives: int = 256
    epochs: int = 1
    refit_epochs: int = 1

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"train.loss={self.loss!r} is unknown; choose one of {LOSSES}")
        for key in ("batch_size", "n_negatives", "epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr} must be > 0")
        if self.refit_epochs < 0:
            raise ConfigError(f"train.refit_epochs={self.refit_epochs} must be >= 0")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay={self.weight_decay} must be >= 0")


def batch_loss(
    model: RecModel,
    users: torch.Tensor,
    items: torch.Tensor,
    ratings: torch.Tensor,
    *,
    n_items: int,
    cfg: TrainConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Mean loss of one batch, including the L2 penalty on the rows it touched."""
    b = users.shape[0]
    if cfg.loss == "mse":
        loss = F.mse_loss(model.score_pairs(users, items), ratings)
        reg_items = items
    elif cfg.loss == "bpr":
        neg = torch.randint(0, n_items, (b,), generator=generator)
        diff = model.score_pairs(users, items) - model.score_pairs(users, neg)
        loss = -F.logsigmoid(diff).mean()
        reg_items = torch.cat([items, neg])
    elif cfg.loss == "full_softmax":  # every catalog item is a candidate: the exact softmax over the catalog
        loss = F.cross_entropy(model.score_all(users), items)
        reg_items = items
    else:  # sampled softmax: positive in column 0 against K uniform negatives shared by the batch
        neg = torch.randint(0, n_items, (cfg.n_negatives,), generator=generator)
        neg_logits = model.score_matrix(users, neg).masked_fill(neg.unsqueeze(0) == items.unsqueeze(1), -torch.inf)
        logits = torch.cat([model.score_pairs(users, items).unsqueeze(1), neg_logits], dim=1)
        loss = F.cross_entropy(logits, torch.zeros(b, dtype=torch.long))
        reg_items = items
    return loss + cfg.weight_decay * model.regularizer(users, reg_items) / b


def make_optimizer(model: RecModel, cfg: TrainConfig, *, params: str = "all") -> torch.optim.Adam:
    """Adam over the chosen parameter group, in `named_parameters` order (so its state can be restored).

    `params` picks what moves: "all", "local" (per-user parameters only: fit a silo's users to received
    global parameters) or "global" (users held fixed).
    """
    if params not in PARAM_GROUPS:
        raise ValueError(f"params={params!r}; choose one of {PARAM_GROUPS}")
    chosen = [p for n, p in model.named_parameters() if params == "all" or (params == "local") == is_local(n)]
    return torch.optim.Adam(chosen, lr=cfg.lr)


def train_epochs(
    model: RecModel,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    n_items: int,
    cfg: TrainConfig,
    generator: torch.Generator,
    epochs: int | None = None,
    params: str = "all",
    optimizer: torch.optim.Optimizer | None = None,
) -> float:
    """Train `model` in place for `epochs` (default `cfg.epochs`) passes; returns the last epoch's mean loss.

    Pass `optimizer` to continue from its state (a silo keeps its Adam moments across rounds); otherwise a
    fresh Adam over `params` (see `make_optimizer`) is used.
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"{type(model).__name__} has no trainable parameters: it is solved in closed form from "
                          "sufficient statistics (fedrec.statistics), not trained by SGD")
    users = torch.as_tensor(train[0], dtype=torch.long)
    items = torch.as_tensor(train[1], dtype=torch.long)
    ratings = torch.as_tensor(train[2], dtype=torch.float32)
    n = users.shape[0]
    if n == 0:
        return float("nan")
    opt = optimizer if optimizer is not None else make_optimizer(model, cfg, params=params)
    model.train()
    last = float("nan")
    for _ in range(cfg.epochs if epochs is None else epochs):
        perm = torch.randperm(n, generator=generator)
        total, steps = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            loss = batch_loss(model, users[idx], items[idx], ratings[idx], n_items=n_items, cfg=cfg,
                              generator=generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        last = total / steps
    return last


# ---- a silo's working model, shared by silos, the DP round and the bounds -----------------------------


def initial_global_arrays(spec: ModelSpec, *, n_items: int, seed: int,
                          item_features: np.ndarray | None = None) -> Arrays:
    """The coordinator's first global model: global parameters of a freshly seeded model.

    A model that starts from the catalog's public item features (`model.kwargs.init=features`, iALS) takes them
    from `item_features` (the world's `catalog_features.npy`); without them that is a configuration error.
    """
    torch.manual_seed(seed)
    model = build_model(spec, n_users=1, n_items=n_items)
    if getattr(model, "wants_features", False):
        if item_features is None:
            raise ConfigError(f"model={spec.name} with model.kwargs.init=features needs the catalog's public item "
                              "features, and this dataset has none (synthetic: dataset.item_features > 0; "
                              "MovieLens: genres and year; dataset=file: dataset.item_features_path)")
        model.init_from_features(item_features)  # type: ignore[operator]
    return {k: v.numpy() for k, v in global_state(model).items()}


def assemble_model(spec: ModelSpec, silo: SiloData, global_arrays: Arrays, local: Tensors | None,
                   *, seed: int) -> RecModel:
    """A silo's working model: received global parameters + its own per-user state (fresh on first use).

    A model whose per-user state is the silo's training history (EASE) gets it from `silo.train` here.
    """
    torch.manual_seed(seed)
    model = build_model(spec, n_users=silo.n_users, n_items=silo.n_items)
    load_global_state(model, {k: torch.as_tensor(np.asarray(v)) for k, v in global_arrays.items()})
    model.attach_history(silo.train[0], silo.train[1])
    if local is not None:
        model.load_state_dict(local, strict=False)
    return model


def fitted_model(spec: ModelSpec, silo: SiloData, global_arrays: Arrays, local: Tensors | None, cfg: TrainConfig,
                 *, seed: int) -> RecModel:
    """The model a silo evaluates: the global parameters with its own per-user state, users re-fitted to them."""
    return refit_users(assemble_model(spec, silo, global_arrays, local, seed=seed), silo, cfg, seed=seed)


def optimizer_to_arrays(opt: torch.optim.Optimizer) -> Arrays:
    """Flatten an optimizer's per-parameter state into named arrays (for the silo's node state)."""
    out: Arrays = {}
    for idx, st in opt.state_dict()["state"].items():
        for name, value in st.items():
            out[f"{idx}.{name}"] = torch.as_tensor(value).detach().numpy().copy()
    return out


def optimizer_from_arrays(opt: torch.optim.Optimizer, arrays: Arrays | None) -> None:
    """Restore state written by `optimizer_to_arrays` into an optimizer over the same parameters."""
    if not arrays:
        return
    template = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = torch.as_tensor(np.asarray(value))
    opt.load_state_dict({"state": state, "param_groups": template["param_groups"]})


def refit_users(model: RecModel, silo: SiloData, cfg: TrainConfig, *, seed: int) -> RecModel:
    """A copy of `model` whose user-side parameters were re-fitted to its (frozen) global parameters.

    A model without local parameters (EASE: its user state is the history itself) has nothing to re-fit.
    """
    if cfg.refit_epochs == 0 or not any(is_local(name) for name, _ in model.named_parameters()):
        return model
    fitted = copy.deepcopy(model)
    train_epochs(fitted, silo.train, n_items=silo.n_items, cfg=cfg, generator=torch.Generator().manual_seed(seed),
                 epochs=cfg.refit_epochs, params="local")
    return fitted
