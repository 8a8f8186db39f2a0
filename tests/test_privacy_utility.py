"""The privacy-utility table and figure (`fedrec.privacy_utility`) from results.json-shaped dicts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedrec.privacy_utility import plot_privacy_utility, read_rows, utility_rows, write_rows


def results(federated: float, served: float | None, *, local: float = 0.3, baseline: bool = False) -> dict:
    def block(value: float) -> dict:
        return {"overall": {"ndcg@20": value}, "per_region": {"eu": {"ndcg@20": value}, "na": {"ndcg@20": value / 2}}}

    final = {"federated": block(federated), "local_only": block(local), "popularity": block(0.1)}
    if served is not None:
        final["served"] = block(served)
    if baseline:
        final["local_baseline"] = block(0.35)
    return {"final": final}


def test_rows_hold_every_measured_method_per_region_and_nan_for_what_the_run_lacked() -> None:
    rows = utility_rows(results(0.2, 0.4, baseline=True), 8.0)
    by_region = {r["region"]: r for r in rows}
    assert list(by_region) == ["eu", "na", "overall"]
    assert by_region["na"] == pytest.approx({"epsilon": 8.0, "region": "na", "served": 0.2, "federated": 0.1,
                                             "own_line": math.nan, "local_only": 0.15, "centralized": math.nan,
                                             "popularity": 0.05,
                                             "local_baseline": 0.175, "pooled_baseline": math.nan}, nan_ok=True)


def test_the_figure_has_a_panel_per_region_with_served_global_and_the_non_private_reference() -> None:
    rows = [*utility_rows(results(0.5, None), math.inf), *utility_rows(results(0.2, 0.4), 2.0),
            *utility_rows(results(0.3, 0.45), 8.0)]
    fig = plot_privacy_utility(rows)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["eu", "na", "overall"]
    eu = panels[0]
    lines = {line.get_label(): line for line in eu.get_lines()}
    assert list(lines["served (DP global + own adaptation)"].get_xdata()) == [2.0, 8.0]
    assert list(lines["served (DP global + own adaptation)"].get_ydata()) == [0.4, 0.45]
    assert list(lines["DP global model"].get_ydata()) == [0.2, 0.3]
    assert set(lines["federated, no DP"].get_ydata()) == {0.5}  # the ε=inf run, drawn across
    assert set(lines["local-only (no DP)"].get_ydata()) == {0.3}


def test_rows_survive_a_csv_round_trip_with_inf_and_what_was_not_measured(tmp_path: Path) -> None:
    rows = [*utility_rows(results(0.5, None, baseline=True), math.inf), *utility_rows(results(0.2, 0.4), 2.0)]
    back = read_rows(write_rows(rows, tmp_path / "rows.csv"))
    assert len(back) == len(rows) == 6
    for a, b in zip(rows, back, strict=True):
        assert a == pytest.approx(b, nan_ok=True)
    assert math.isinf(back[0]["epsilon"]) and math.isnan(back[3]["served"]) is False and math.isnan(back[0]["served"])


def test_a_file_that_is_not_a_rows_table_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("region,served\neu,0.3\n")
    with pytest.raises(ValueError, match=r"other\.csv:2: no \['epsilon'\]"):
        read_rows(path)
    with pytest.raises(ValueError, match="no privacy-utility rows"):
        write_rows([], tmp_path / "empty.csv")
