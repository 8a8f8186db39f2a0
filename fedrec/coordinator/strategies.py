"""Server-side aggregation: Flower's own strategies (FedAvg, FedAvgM, FedAdam), configured for fedrec.

We use Flower's strategy objects for node sampling and aggregation, but drive the round loop ourselves
(`coordinator.py`) so replies are ordered by region (reproducible sums), evaluation is reported per
region, and later layers (privacy budgets, adoption) hook in between steps.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.serverapp.strategy import Bulyan, FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, MultiKrum

from fedrec.messages import WEIGHT_KEY
from fedrec.settings import RunSettings


def build_strategy(s: RunSettings) -> FedAvg:
    """The configured strategy; FedAvg, FedAvgM and FedAdam weight replies by the `weight` each silo reports.

    `robust=median|trimmed_mean|nnm|krum|bulyan` replace the average by Flower's FedMedian / FedTrimmedAvg
    (unweighted, coordinate-wise; for `nnm` the round loop mixes the replies first) / MultiKrum / Bulyan
    (tolerating f = int(trim_beta x n) of the n silos trained per round); the config allows them only with plain
    FedAvg. `row_clip` is applied to the replies before any of the others aggregate (`fedrec.coordinator.robust`,
    called by the round loop).
    """
    kw = {"fraction_train": s.fraction_train, "fraction_evaluate": 1.0,
          "min_train_nodes": max(1, int(s.min_nodes * s.fraction_train)), "min_evaluate_nodes": s.min_nodes,
          "min_available_nodes": s.min_nodes, "weighted_by_key": WEIGHT_KEY}
    if s.robust == "median":
        return FedMedian(**kw)  # type: ignore[arg-type]
    if s.robust in ("trimmed_mean", "nnm"):  # nnm: the round loop mixes the replies first
        return FedTrimmedAvg(beta=s.trim_beta, **kw)  # type: ignore[arg-type]
    if s.robust in ("krum", "bulyan"):  # f tolerated silos out of the n trained per round: int(trim_beta x n)
        n = max(1, int(s.min_nodes * s.fraction_train))
        f = int(s.trim_beta * n)
        if s.robust == "krum":  # Multi-Krum averaging the n - f updates with the best Krum scores
            return MultiKrum(num_malicious_nodes=f, num_nodes_to_select=max(1, n - f), **kw)  # type: ignore[arg-type]
        return Bulyan(num_malicious_nodes=f, **kw)  # type: ignore[arg-type]
    if s.strategy == "fedadam":
        return FedAdam(eta=s.server_lr, eta_l=s.lr, beta_1=s.adam_beta1, beta_2=s.adam_beta2, tau=s.adam_tau,
                       **kw)  # type: ignore[arg-type]
    momentum = s.server_momentum if s.strategy == "fedavgm" else 0.0
    if s.strategy == "fedavgm" or s.server_lr != 1.0:
        # FedAvg with a server learning rate (Reddi et al. 2021) is FedAvgM without momentum.
        return FedAvgM(server_learning_rate=s.server_lr, server_momentum=momentum, **kw)  # type: ignore[arg-type]
    return FedAvg(**kw)  # type: ignore[arg-type]


def aggregation_rule(s: RunSettings, *, statistics: bool) -> str:
    """How this run's versions are aggregated, as recorded in each version's manifest (e.g. `fedavg+row_clip:2`).

    Robust aggregation needs each silo's update: under SecAgg+ or for a statistics model it does not apply and
    the label says so.
    """
    if s.robust == "none":
        return s.strategy
    if statistics or s.secure_aggregation == "secaggplus":
        return f"{s.strategy} ({s.robust} not applicable: {'statistics' if statistics else 'secaggplus'})"
    if s.robust == "row_clip" and s.privacy_settings().enabled:
        return f"{s.strategy} (row_clip not applied under user_dp)"
    detail = f":{s.row_clip:g}" if s.robust == "row_clip" else f":{s.trim_beta:g}" if s.robust != "median" else ""
    return f"{s.strategy}+{s.robust}{detail}"


def trimming_problem(s: RunSettings, n_nodes: int, *, statistics: bool) -> str | None:
    """Why `robust=trimmed_mean|nnm` would cut no silo in this federation (None: it cuts at least one).

    They tolerate (trimmed_mean / nnm: cut at each end) f = int(trim_beta x n) replies, n the silos trained per
    round; with f = 0 they are an unweighted average the manifest would still name as the defence. Bulyan also
    needs n >= 4f + 3.
    """
    if s.robust not in ("trimmed_mean", "nnm", "krum", "bulyan") or statistics or s.secure_aggregation == "secaggplus":
        return None
    per_round = max(int(n_nodes * s.fraction_train), max(1, int(s.min_nodes * s.fraction_train)))
    f = int(s.trim_beta * per_round)
    if s.robust == "bulyan" and f >= 1 and per_round < 4 * f + 3:
        return (f"strategy.robust=bulyan tolerating {f} silo(s) (int({s.trim_beta:g} x {per_round})) needs at least "
                f"{4 * f + 3} silos per round, this federation trains {per_round}; lower strategy.trim_beta or "
                "choose another robust rule")
    if f >= 1:
        return None
    return (f"strategy.robust={s.robust} with strategy.trim_beta={s.trim_beta:g} cuts no silo of the {per_round} "
            f"trained per round (int({s.trim_beta:g} x {per_round}) = 0); set strategy.trim_beta above "
            f"1/{per_round} (e.g. {math.ceil(100 / per_round + 0.5) / 100:g}, below 0.5) or choose another robust rule")


def strategy_state(strategy: FedAvg, names: list[str]) -> dict[str, np.ndarray]:
    """The server optimizer's state (FedAvgM momentum, FedAdam moments) as named arrays, for a checkpoint.

    FedAvgM keeps its momentum as a list in the order of the global arrays, `names`.
    """
    out: dict[str, np.ndarray] = {}
    for name, v in zip(names, getattr(strategy, "momentum_vector", None) or [], strict=False):
        out[f"momentum/{name}"] = np.asarray(v)
    for attr in ("m_t", "v_t"):
        for k, v in (getattr(strategy, attr, None) or {}).items():
            out[f"{attr}/{k}"] = np.asarray(v)
    return out


def restore_strategy_state(strategy: FedAvg, state: dict[str, np.ndarray], names: list[str]) -> None:
    """Put a checkpoint's server optimizer state back (the inverse of `strategy_state`)."""
    if any(k.startswith("momentum/") for k in state):
        strategy.momentum_vector = [state[f"momentum/{n}"] for n in names]  # type: ignore[attr-defined]
    for attr in ("m_t", "v_t"):
        part = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(attr + "/")}
        if part:
            setattr(strategy, attr, part)
