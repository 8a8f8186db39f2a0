"""Where a run's global line starts: the seeded initial model (version 0) or a registered version it continues.

`federation.start_version` continues a line from a version in the run's registry: a divested region's rebuilt
line starts at the last version it never touched, and a deployment starts a new run from a version. The run then
trains rounds `version.round + 1 .. rounds` from the version's weights, with a fresh server optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedrec.errors import ConfigError
from fedrec.run_lines import excluded_regions
from fedrec.settings import RunSettings
from fedrec.versions import ModelRegistry, ModelVersion


def load_start(registry: ModelRegistry | None, s: RunSettings, init: Mapping[str, np.ndarray]
               ) -> tuple[dict[str, np.ndarray], ModelVersion]:
    """The start version's weights (in `init`'s names, dtypes and shapes) and the version; clear errors else."""
    if registry is None:
        raise ConfigError("federation.start_version needs the registry holding that version (registry_dir, or an "
                          "output dir whose registry/ has it)")
    arrays, version = registry.load(s.start_version)
    if version.spec != s.model_spec.to_dict():
        raise ConfigError(f"start version {version.short_id} is a {version.spec} model, this run trains "
                          f"{s.model_spec.to_dict()}: a line continues with the model it was made with")
    wrong = sorted(k for k in init if k not in arrays or arrays[k].shape != init[k].shape) + sorted(
        k for k in arrays if k not in init)
    if wrong:
        raise ConfigError(f"start version {version.short_id} does not fit this run's model (arrays {wrong} "
                          "differ): is it from a world with another catalog?")
    if version.round >= s.num_rounds:
        raise ConfigError(f"start version {version.short_id} is round {version.round}; federation.rounds="
                          f"{s.num_rounds} leaves nothing to train (the run trains rounds {version.round + 1}.."
                          f"{s.num_rounds})")
    excluded = set(excluded_regions(s))
    for ancestor in registry.lineage(version.id) if excluded else []:
        if excluded <= set(ancestor.divestment.get("removed", [])):
            break  # a divested version: what came before it is accounted for by its divestment record
        if touched := excluded & set(ancestor.contributors):
            raise ConfigError(f"start version {version.short_id} descends from version {ancestor.short_id}, made "
                              f"with region(s) {sorted(touched)} this run excludes: a line without them starts at a "
                              "version they never touched (or at a divested one)")
    return {k: np.ascontiguousarray(arrays[k].astype(init[k].dtype)) for k in init}, version
