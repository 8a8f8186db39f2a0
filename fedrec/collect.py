"""Sweeps that collect themselves: every `results.json` under a directory → one tidy table, and a summary.

A sweep is what `fedrec -m ...` leaves in Hydra's multirun layout (`multirun/DATE/TIME/<job>/`), or any
directory tree holding runs. Each run contributes one row per method × region × metric:

    run, <override columns>, method, region, metric, value

- `run`: the run's directory relative to the sweep;
- override columns: the run's own Hydra overrides (`.hydra/overrides.yaml`, e.g. `model=mf seed=1` →
  columns `model`, `seed`), so swept values are columns, not parsed from paths;
- `method`: `federated`, `served`, `centralized`, `local_only`, `popularity`, `local_baseline`,
  `pooled_baseline`, and each baseline as `baseline:<name>:pooled` / `baseline:<name>:local_only` (all on the
  test split); `valid:federated` is the federated model on the VALIDATION users (results.json's `validation`
  block: what a tuning study selects on, `experiment=study_tune`);
- `region`: each region, and `overall` (user-weighted, as in `results.json`).

`summarize` averages over `seed` (every other override kept): mean, standard deviation, number of seeds and
the half-width of a 95% Student-t confidence interval.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from scipy import stats

from fedrec.errors import ConfigError

RESULTS = "results.json"
OVERRIDES = Path(".hydra") / "overrides.yaml"
SEED = "seed"
KEYS = ["method", "region", "metric"]


def _blocks(final: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(method, block) for every block of `final` with per-region metrics."""
    for method, block in final.items():
        if method == "baselines":
            for name, b in block.items():
                for side, label in (("centralized", "pooled"), ("local_only", "local_only")):
                    if b.get(side):
                        yield f"baseline:{name}:{label}", b[side]
        elif isinstance(block, dict) and "per_region" in block:
            yield method, block


def overrides_of(run_dir: Path) -> dict[str, str]:
    """The run's Hydra overrides as {key: value} (empty when Hydra did not write them)."""
    path = run_dir / OVERRIDES
    if not path.is_file():
        return {}
    items = yaml.safe_load(path.read_text()) or []
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def run_rows(results: dict[str, Any], run: str, overrides: dict[str, str]) -> list[dict[str, Any]]:
    """One run's tidy rows."""
    final = results.get("final")
    if not isinstance(final, dict):
        raise ConfigError(f"{run}/{RESULTS} has no 'final' block: not a fedrec results file")
    validation = results.get("validation") or {}
    blocks = [*_blocks(final), *((f"valid:{m}", b) for m, b in validation.items() if isinstance(b, dict))]
    rows = []
    for method, block in blocks:
        regions = {**block.get("per_region", {}), "overall": block.get("overall", {})}
        for region, metrics in regions.items():
            for metric, value in metrics.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    rows.append({"run": run, **overrides, "method": method, "region": region, "metric": metric,
                                 "value": float(value)})
    return rows


def collect_sweep(sweep_dir: Path) -> pd.DataFrame:
    """Every run under `sweep_dir` as one tidy table (see the module docstring)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} is not a directory")
    files = sorted(sweep_dir.rglob(RESULTS))
    if not files:
        raise ConfigError(f"no {RESULTS} under {sweep_dir}: point at a sweep's directory (e.g. multirun/DATE/TIME)")
    rows: list[dict[str, Any]] = []
    for path in files:
        run = str(path.parent.relative_to(sweep_dir)) or "."
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): a run still "
                              "writing, or a broken file; remove it or re-run that job") from exc
        rows.extend(run_rows(results, run, overrides_of(path.parent)))
    table = pd.DataFrame(rows)
    swept = [c for c in table.columns if c not in ("run", *KEYS, "value")]
    return table[["run", *swept, *KEYS, "value"]]


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± 95% CI over seeds for every configuration × method × region × metric."""
    group = [c for c in table.columns if c not in ("run", SEED, "value")]
    agg = table.groupby(group, dropna=False, sort=True)["value"].agg(["mean", "std", "count"]).reset_index()
    agg = agg.rename(columns={"count": "seeds"})
    agg["std"] = agg["std"].fillna(0.0)
    agg["ci95"] = [0.0 if n < 2 else float(stats.t.ppf(0.975, n - 1)) * s / math.sqrt(n)
                   for s, n in zip(agg["std"], agg["seeds"], strict=True)]
    return agg


def write_collected(sweep_dir: Path, out_dir: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
    """Collect and summarize; write `collected.csv`, `collected.parquet` and `summary.csv` (into the sweep)."""
    table = collect_sweep(sweep_dir)  # first: a wrong path must not leave a directory behind
    summary = summarize(table)
    out = Path(out_dir or sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "collected.csv", out / "collected.parquet", out / "summary.csv"]
    table.to_csv(paths[0], index=False)
    table.to_parquet(paths[1], index=False)
    summary.to_csv(paths[2], index=False)
    return table, summary, paths
