"""Strong simple baselines on the exact split the federation uses: EASE, ItemKNN and popularity.

Each runs pooled (one model on all silos' training data, users kept distinct) and local-only (each silo
alone), is tuned on validation only, and is scored per silo with the federation's metric code, so its
`SiloEvaluation`s pool with `fedrec.evaluation.pool` exactly like the federated ones (Dacrema et al.,
RecSys 2019: compare against tuned simple baselines). Pure functions: no Flower, no Hydra.
"""

from __future__ import annotations

from fedrec.baselines.ease import DEFAULT_MAX_ITEMS, LAMBDAS, ease_weights, fit_ease
from fedrec.baselines.itemknn import KS, fit_itemknn, neighbours
from fedrec.baselines.matrix import ItemModel, binary, evaluate_scores, pooled_matrix, silo_matrix
from fedrec.baselines.popularity import item_counts
from fedrec.baselines.run import BASELINES, BaselineResult, BaselineSpec, Choice, run_baselines

__all__ = [
    "BASELINES",
    "DEFAULT_MAX_ITEMS",
    "KS",
    "LAMBDAS",
    "BaselineResult",
    "BaselineSpec",
    "Choice",
    "ItemModel",
    "binary",
    "ease_weights",
    "evaluate_scores",
    "fit_ease",
    "fit_itemknn",
    "item_counts",
    "neighbours",
    "pooled_matrix",
    "run_baselines",
    "silo_matrix",
]
