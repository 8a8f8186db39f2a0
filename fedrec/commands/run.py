"""`fedrec [OVERRIDES]`: a Hydra app composing `conf/` into an `ExperimentConfig` and running it.

Hydra stays here, at the entry point. User mistakes (bad data, bad config) print one clear message and
exit with status 2 instead of a stack trace.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from fedrec.errors import FedrecError


def conf_dir() -> str:
    """`conf/` next to the package (editable install, repo checkout) or inside it (wheel)."""
    here = Path(__file__).resolve().parents[1]  # the package: fedrec/conf links to the repo's conf/
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").exists():
            return str(candidate)
    raise FileNotFoundError(f"fedrec's conf/ directory not found next to {here}")


def compose_experiment(overrides: list[str]) -> Any:
    """The `ExperimentConfig` that `fedrec OVERRIDES` would run (Hydra's compose API over `conf/`).

    A bad override is a `ConfigError` (one line, exit 2), not Hydra's traceback.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from fedrec.config import experiment_from_dict
    from fedrec.errors import ConfigError

    try:
        with initialize_config_dir(config_dir=conf_dir(), version_base=None):
            cfg = compose("config", overrides=list(overrides))
    except HydraException as exc:
        raise ConfigError(f"bad override in {overrides}: {exc}") from exc
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return experiment_from_dict({str(k): v for k, v in container.items() if k not in ("progress", "experiment")})


def progress_enabled(setting: Any, env: dict[str, str]) -> bool:
    """`auto` shows progress unless running under CI (CI=true)."""
    if isinstance(setting, bool):
        return setting
    if str(setting).lower() in ("true", "false"):
        return str(setting).lower() == "true"
    return env.get("CI", "").lower() not in ("true", "1")


def run(cfg: DictConfig, out_dir: Path, console: Console) -> dict[str, Any]:
    """Compose → validate → run → print; returns the results dict."""
    from fedrec.config import experiment_from_dict  # imports torch: not needed for `fedrec --help`
    from fedrec.experiment import run_experiment
    from fedrec.report import print_summary, round_progress

    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    resolved: dict[str, Any] = {str(k): v for k, v in container.items()}
    exp = experiment_from_dict({k: v for k, v in resolved.items() if k not in ("progress", "experiment")})
    (out_dir).mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    show = progress_enabled(resolved.get("progress", "auto"), dict(os.environ))
    console.print(f"fedrec: dataset={exp.dataset.name} model={exp.model.name} strategy={exp.strategy.name} "
                  f"rounds={exp.federation.rounds} privacy={exp.privacy.name}"
                  + (f" (ε={exp.privacy.epsilon:g} per silo)" if exp.privacy.name != "none" else "") + f" → {out_dir}")
    lines = max(1, len(exp.federation.coalitions))  # a run with coalitions reports each line's rounds
    with round_progress(exp.federation.rounds * lines, enabled=show, console=console) as on_round:
        results = run_experiment(exp, out_dir, on_round=on_round, resolved_config=resolved, log=console.print)
    print_summary(results, console)
    from fedrec.plots import save_figures

    figures = save_figures(results, out_dir)
    console.print(f"results: {out_dir / 'results.json'}; figures: {', '.join(p.name for p in figures)}")
    return results


def objective_metric(cfg: DictConfig) -> str:
    """The config's `objective`, checked before anything runs (a metric fedrec does not compute: `ConfigError`)."""
    from fedrec.errors import ConfigError
    from fedrec.metrics import METRICS

    metric = str(cfg.objective)
    if metric not in METRICS:
        raise ConfigError(f"objective={metric!r} is not a metric fedrec computes; one of {', '.join(METRICS)}")
    return metric


def objective(results: dict[str, Any], metric: str) -> float:
    """The value a Hydra sweeper optimizes: `metric` of the federated model on validation users, pooled.

    NaN when the run has no validation block (no silo logged its last round: a run stopped early); Optuna records
    such a trial as failed.
    """
    block = results.get("validation", {}).get("federated")
    return float(block["overall"][metric]) if block else float("nan")


@hydra.main(version_base=None, config_path=conf_dir(), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    """Run the composed experiment and return its `objective` (for sweepers that optimize).

    A user mistake is one red line and exit status 2.
    """
    console = Console()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metric = objective_metric(cfg)
        results = run(cfg, out_dir, console)
        value = objective(results, metric)
    except FedrecError as exc:
        console.print(f"[bold red]fedrec: error:[/] {exc}", highlight=False)
        sys.exit(2)
    console.print(f"objective: validation {metric} of the federated model = {value:.4f}")
    return value
