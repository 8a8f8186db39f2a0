"""The quickstart notebook: committed without outputs, and it runs top to bottom in a fresh kernel."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
PROBE = "import sys\nprint('KERNEL_PREFIX=' + sys.prefix)"


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_committed_notebook_is_valid_and_stripped() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = _code_cells(nb)
    assert cells, "notebook has code cells"
    for i, cell in enumerate(cells):
        assert cell.outputs == [], f"code cell {i} has committed outputs"
        assert cell.execution_count is None, f"code cell {i} has an execution_count"
        assert "execution" not in cell.metadata, f"code cell {i} has execution timing metadata"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.fixture
def this_interpreter_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A `python3` kernelspec that runs *this* interpreter, visible to this test only.

    The venv ships a `python3` kernelspec whose argv is plain `python` (jupyter_client swaps that for
    `sys.executable`), but a user-wide or system spec could shadow it. A spec written by ipykernel into a
    temporary dir on JUPYTER_PATH (searched first) pins the kernel to `sys.executable` without installing
    anything outside tmp_path.
    """
    pytest.importorskip("ipykernel")
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(tmp_path / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    return "python3"


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
