"""A region leaves a simulated federation: `fedrec.silo.departure.depart` on the silo the run kept for it.

In simulation the researcher owns every silo, so the region's state dir and data come from the run's settings
(`<state root>/<region>`, `<data-dir>/silo_<region>.npz`); a deployed jurisdiction runs the same step on its own
node (`fedrec leave --state-dir DIR --data-path FILE`). The remaining regions' rebuilt line is
`fedrec.divestment.divest`; the two may run at the same time (they touch different state dirs).
"""

from __future__ import annotations

from pathlib import Path

from fedrec.data.split import SiloData
from fedrec.errors import ConfigError
from fedrec.settings import RunSettings, read_manifest, silo_state_root
from fedrec.silo.departure import Departure, depart

DEFAULT_ROUNDS = 1
"""Local rounds of the departing region's own line before it is served (its private adaptation)."""


def region_paths(settings: RunSettings, region: str) -> tuple[Path, Path]:
    """(state dir, data file) the run kept for `region`, or a clear error."""
    world = list(read_manifest(settings.data_dir)["regions"])
    if region not in world:
        raise ConfigError(f"unknown region {region!r}; the world's regions: {world}")
    root = silo_state_root(settings)
    if root is None:
        raise ConfigError("the run kept no silo state (no state-dir nor output-dir): the region's serving pointer "
                          "and users are not on disk, so there is nothing to leave with")
    return root / region, Path(settings.data_dir) / f"silo_{region}.npz"


def leave(settings: RunSettings, region: str, *, rounds: int = DEFAULT_ROUNDS, state_dir: Path | None = None,
          data_path: Path | None = None, seed: int | None = None) -> Departure:
    """`region` leaves the federation of the run `settings` ran: its own line, trained `rounds` local rounds.

    `state_dir` / `data_path` override where the region's silo keeps its state and data (a deployed silo's);
    the model and training settings are the run's. `seed` defaults to the run's.
    """
    if state_dir is None or data_path is None:
        kept_state, kept_data = region_paths(settings, region)
        state_dir, data_path = state_dir or kept_state, data_path or kept_data
    if not Path(state_dir).is_dir():
        raise ConfigError(f"region {region!r} has no state dir at {state_dir}: it never took part in a run that "
                          "kept silo state, so it serves nothing it could keep")
    if not Path(data_path).exists():
        raise ConfigError(f"region {region!r}: no silo data at {data_path}")
    silo = SiloData.load(Path(data_path))
    if silo.region != region:
        raise ConfigError(f"{data_path} holds region {silo.region!r}'s data, not {region!r}'s: give its own data")
    return depart(Path(state_dir), silo, settings.model_spec, settings.train_config(), rounds=rounds,
                  seed=settings.seed if seed is None else seed)
