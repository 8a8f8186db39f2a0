"""The Hydra studies (`conf/experiment/study_*.yaml`, run with `fedrec -m experiment=study_X`).

Each declares its sweep in `hydra.sweeper.params`; every job of the sweep composes into a valid experiment that
carries its swept value (expanded with Hydra's own override parser, as `fedrec -m` expands it; no run here: the
2x2 sweep run end to end is `test_collect.py`).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from fedrec.commands.run import compose_experiment, conf_dir
from fedrec.data.registry import synthetic_config

STUDIES = {"study_heterogeneity": 8, "study_silo_size": 6, "study_strategies": 12}


def sweep_jobs(study: str) -> list[list[str]]:
    """Every job's overrides, as Hydra's basic sweeper makes them from the study's `hydra.sweeper.params`."""
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = compose("config", overrides=[f"experiment={study}"], return_hydra_config=True)
    params: dict[str, Any] = dict(cfg.hydra.sweeper.params or {})
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in parsed]
    return [[f"experiment={study}", *combo] for combo in itertools.product(*choices)]


@pytest.mark.parametrize(("study", "n_jobs"), STUDIES.items())
def test_every_job_of_a_study_composes_with_its_swept_value(study: str, n_jobs: int) -> None:
    jobs = sweep_jobs(study)
    assert len(jobs) == n_jobs
    seen = set()
    for overrides in jobs:
        exp = compose_experiment(overrides)
        assert exp.seed == int(dict(o.split("=", 1) for o in overrides)["seed"])
        world = synthetic_config(exp.dataset.params)  # what the loader will generate, validated
        seen.add((world.region_shift, world.region_sizes, exp.strategy.name, exp.model.name, exp.seed))
    assert len(seen) == n_jobs  # every job is a different experiment


def test_the_silo_size_study_varies_only_the_smallest_region() -> None:
    jobs = sweep_jobs("study_silo_size")
    sizes = {synthetic_config(compose_experiment(job).dataset.params).region_sizes for job in jobs}
    assert {s[:-1] for s in sizes} == {(10.0, 6.0, 3.0, 1.5)}
    assert sorted(s[-1] for s in sizes) == [0.25, 1.0, 4.0]
