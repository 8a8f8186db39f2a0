"""Every notebook is committed without outputs; the quickstart runs top to bottom in a fresh kernel."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
PROBE = "import sys\nprint('KERNEL_PREFIX=' + sys.prefix)"


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", sorted(NOTEBOOK.parent.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebook_is_valid_and_stripped(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    cells = _code_cells(nb)
    assert cells, "notebook has code cells"
    for i, cell in enumerate(cells):
        assert cell.outputs == [], f"code cell {i} has committed outputs"
        assert cell.execution_count is None, f"code cell {i} has an execution_count"
        assert "execution" not in cell.metadata, f"code cell {i} has execution timing metadata"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.slow
def test_quickstart_notebook_executes(this_interpreter_kernel: str) -> None:
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name=this_interpreter_kernel,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [o for c in _code_cells(nb) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    probe = "".join(o.get("text", "") for o in _code_cells(nb)[-1].outputs)
    assert f"KERNEL_PREFIX={sys.prefix}" in probe, "kernel ran a different interpreter than the tests"

    shown = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    frames = [o for o in shown if 'class="dataframe"' in o.data.get("text/html", "")]
    per_method = [o for o in frames if "federated" in o.data["text/html"] and "centralized" in o.data["text/html"]]
    assert per_method, "the per-region DataFrame (methods as columns) was displayed"
    assert any("<th>overall</th>" in o.data["text/html"] for o in per_method), "it has the overall row"
    assert any("overall" in o.data.get("text/plain", "") and "local-only" in o.data.get("text/plain", "")
               for o in shown), "the rich results_table was displayed"
    assert any("what each region serves" in o.data.get("text/plain", "") and "fork of" in o.data.get("text/plain", "")
               for o in shown), "the adoption table was displayed, with apac serving its fork"
    assert any("served ε=8" in o.data["text/html"] and "local-only, no DP" in o.data["text/html"] for o in frames), \
        "the privacy-utility table (read from the committed sweep) was displayed"
    assert sum("image/png" in o.data for o in shown) == 4, \
        "both result figures, the adoption figure and the privacy-utility figure rendered"


@pytest.mark.slow
@pytest.mark.parametrize("study", ["study_heterogeneity", "study_silo_size", "study_strategies"])
def test_a_study_notebook_runs_its_tiny_sweep_and_shows_the_collected_table_and_figures(
        study: str, this_interpreter_kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With FEDREC_TINY=1 the notebook runs its Hydra study (`fedrec -m`, Flower's simulation engine) into
    FEDREC_SWEEP, collects it and plots it; the displayed table holds exactly the sweep's runs' own numbers."""
    import json

    import yaml

    nbclient = pytest.importorskip("nbclient")
    sweep = tmp_path / "sweep"
    monkeypatch.setenv("FEDREC_TINY", "1")
    monkeypatch.setenv("FEDREC_SWEEP", str(sweep))
    path = NOTEBOOK.parent / f"{study}.ipynb"
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=this_interpreter_kernel,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()

    runs = sorted(sweep.glob("*/results.json"))
    assert len(runs) == {"study_heterogeneity": 4, "study_silo_size": 3, "study_strategies": 6}[study]
    outputs = [o for c in _code_cells(nb) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    assert sum("image/png" in o.data for o in shown) == (2 if study == "study_strategies" else 1)
    pivot = next(o.data["text/html"] for o in shown if "federated" in o.data.get("text/html", ""))
    for run in runs:  # every run's own overall federated NDCG@20 (one seed: the mean is the run's value)
        value = json.loads(run.read_text())["final"]["federated"]["overall"]["ndcg@20"]
        assert f"{value:.4f}".rstrip("0") in pivot, (run.parent.name, value)
        assert yaml.safe_load((run.parent / ".hydra" / "overrides.yaml").read_text())  # Hydra's own record


def _run_tiny_study(notebook: str, env: str, out: Path, summary_file: str, kernel: str,
                    monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], str]:
    """Execute a study notebook with FEDREC_TINY=1 writing into `out` (its `env` variable); check that no cell
    failed and that it showed one figure; the study's summary and the HTML it displayed."""
    import json

    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("FEDREC_TINY", "1")
    monkeypatch.setenv(env, str(out))
    nb = nbformat.read(NOTEBOOK.parent / notebook, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name=kernel,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    summary = json.loads((out / summary_file).read_text())
    outputs = [o for c in _code_cells(nb) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    assert sum("image/png" in o.data for o in shown) == 1
    return summary, " ".join(o.data.get("text/html", "") for o in shown)


@pytest.mark.slow
def test_the_divestment_notebook_runs_its_tiny_study_and_shows_its_numbers(
        this_interpreter_kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With FEDREC_TINY=1 the notebook runs `simulations/divestment.py` (Flower's simulation engine) on a tiny world
    into FEDREC_DIVEST and shows its tables and figure; the tables hold the study's own numbers."""
    summary, html = _run_tiny_study("study_divestment.ipynb", "FEDREC_DIVEST", tmp_path / "divest",
                                    "divestment_study.json", this_interpreter_kernel, monkeypatch)
    for line, value in summary["overall_ndcg@20"].items():
        assert f"{value:.4f}".rstrip("0") in html, (line, value)
    assert f"{summary['removal_test']['signal']['before']:.4f}".rstrip("0") in html


@pytest.mark.slow
def test_coalition_study_notebook_executes_on_a_tiny_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         this_interpreter_kernel: str) -> None:
    """With FEDREC_TINY=1 the notebook runs `simulations/coalitions.py` (in-process grid) into FEDREC_COALITIONS and
    shows its table and figure, holding the study's own numbers."""
    summary, html = _run_tiny_study("study_coalitions.ipynb", "FEDREC_COALITIONS", tmp_path / "coalitions",
                                    "coalitions_study.json", this_interpreter_kernel, monkeypatch)
    assert set(summary["coalitions"]) == {"atlantic", "pacific"}
    for region, row in summary["per_region"].items():
        assert region in html and str(round(row["whole"], 4))[:5] in html, region
