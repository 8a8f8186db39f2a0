"""Flower ServerApp (the coordinator). Thin: read settings once, hand the Grid to `run_federation`."""

from __future__ import annotations

import random

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.coordinator.history import FederationHistory
from fedrec.coordinator.round_loop import RoundCallback, run_federation
from fedrec.settings import RunSettings

SIMULATION_PULL_INTERVAL_S = 0.005
"""How often the coordinator polls the simulation engine for replies (Flower's default, 0.1 s, adds up to 0.1 s
to every exchange; measured in `benchmarks/federation_speed.py`)."""


def make_server_app(settings: RunSettings | None = None, *, on_round: RoundCallback | None = None,
                    history: FederationHistory | None = None) -> ServerApp:
    """A ServerApp; with `settings` it ignores `context.run_config` (in-process runs from Python).

    In-process callers pass a `history` for the coordinator to fill: what the run did, without reading
    `federated_history.json` back.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        s = settings or RunSettings.from_run_config(dict(context.run_config))
        random.seed(s.seed)  # Flower's node sampling uses `random`; seed it for reproducible runs
        if type(grid).__name__ == "InMemoryGrid":  # the simulation engine's grid: poll replies every 5 ms, not 100
            grid.pull_interval = min(grid.pull_interval, SIMULATION_PULL_INTERVAL_S)  # type: ignore[attr-defined]
        run_federation(grid, s, on_round=on_round, run_id=s.run_key(context.run_id), context=context,
                       history=history)

    return app


app = make_server_app()
