"""``Decision._repr_html_`` in a real notebook (issue 19): ``examples/decision_in_a_notebook.ipynb`` is executed on a
Python kernel and the cell showing the decision must carry its verdict, reason, classes and pictured pairs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "decision_in_a_notebook.ipynb"


def test_the_example_notebook_shows_the_decision_in_its_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("VDC_SHARED", os.environ.get("VDC_SHARED", str(REPO.parent / "shared" / "data")))
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, if any cell fails
    cell = next(c for c in notebook.cells if c.cell_type == "code" and c.source.rstrip().endswith("\ndecision"))
    html = next(o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {}))
    assert 'data-action="train"' in html and ">TRAIN<" in html
    assert "1 class(es) the reference has never seen (&#x27;birds&#x27;)" in html
    assert "NEVER SEEN" in html and html.index("birds</td>") < html.index("cats</td>")  # the unseen class first
    assert html.count('src="data:image/png;base64,') == 8  # the 4 re-saved cats and their originals
    table = next(o for c in notebook.cells for o in c.get("outputs", []) if "classes" in c.source
                 and "text/html" in o.get("data", {}))
    assert "in_reference" in table["data"]["text/html"]  # the per-class DataFrame itself
