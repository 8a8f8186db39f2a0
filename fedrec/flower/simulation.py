"""Run the ClientApp/ServerApp on Flower's simulation engine (Ray) from Python, one virtual node per silo.

`flwr run .` is the CLI path (it reads `[tool.flwr.app.config]`); this is the in-process path the Hydra
CLI, notebooks and tests use. It passes settings to the apps directly because the Python entry point
gives apps an empty run config.
"""

from __future__ import annotations

import logging
import os

from fedrec.coordinator.history import FederationHistory
from fedrec.coordinator.round_loop import RoundCallback
from fedrec.flower.client_app import make_client_app
from fedrec.flower.egress_recorder import Mod
from fedrec.flower.runtime import prompt_engine
from fedrec.flower.server_app import make_server_app
from fedrec.run_lines import participating_regions
from fedrec.settings import RunSettings, read_manifest
from fedrec.silo.regime import Regimes

QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_DEDUP_LOGS": "0",
             "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


def run_simulation(settings: RunSettings, *, on_round: RoundCallback | None = None,
                   cpus_per_client: float = 1.0, flwr_logs: bool = False, client_mods: list[Mod] | None = None,
                   reproducible_noise: bool = False, inner_mods: list[Mod] | None = None,
                   ray_address: str | None = None, regimes: Regimes | None = None) -> FederationHistory:
    """Run the federation and return what it did (also in `federated_history.json` when there is an output dir).

    `client_mods` are Flower mods wrapped around every silo's ClientApp (e.g. `egress_recorder`); `inner_mods`
    sit inside SecAgg+'s client side (`make_client_app`: a hostile node's own code, for research).
    `reproducible_noise` seeds the silos' DP noise from the run's seed (research and tests only; by default
    every silo draws it from the OS CSPRNG and two runs release different models). `ray_address` picks the Ray
    cluster (`federation.ray_address`); it only matters when this call starts Ray (not inside a
    `fedrec.flower.runtime.shared_runtime()` that already did). `regimes` is each simulated jurisdiction's own
    policy (`fedrec.silo.regime`), handed to the silos' ClientApp, never put in the run config.
    """
    from flwr.simulation import run_simulation as flwr_run_simulation

    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    n_regions = len(participating_regions(settings, list(read_manifest(settings.data_dir)["regions"])))
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not flwr_logs:
        flwr_logger.setLevel(logging.ERROR)  # also hides run_simulation's deprecation notice
    history = FederationHistory()
    with prompt_engine():
        try:
            flwr_run_simulation(
                server_app=make_server_app(settings, on_round=on_round, history=history),
                client_app=make_client_app(settings, mods=client_mods, reproducible_noise=reproducible_noise,
                                           inner_mods=inner_mods, regimes=regimes),
                num_supernodes=n_regions,
                backend_config={
                    "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
                    "init_args": {"logging_level": "ERROR", "log_to_driver": flwr_logs, "include_dashboard": False,
                                  **({"address": ray_address} if ray_address else {})},
                },
            )
        finally:
            flwr_logger.setLevel(level)
    return history
