"""Structure of the committed notebooks: what papermill, nbval and `lvit reproduce` rely on."""

from __future__ import annotations

import jupytext
import nbformat
import papermill
import pytest

from lvit.reproduce import REPORT_NOTEBOOK, notebook_names, notebooks_dir

# `lvit reproduce` passes these to every notebook; each must declare them or the run is refused.
COMMON_PARAMETERS = {"profile", "seeds", "device", "data_root", "results_dir"}
NAMES = notebook_names()


def test_every_seed_table_and_figure_has_a_notebook():
    expected = {"complexity", "localvit_expansion_dw", "localvit_activation", "localvit_placement",
                "localvit_curves", "localvit_main", "dpt_read_ablation", "dpt_inference_resolution",
                "dpt_zero_shot_depth", "dpt_segmentation", REPORT_NOTEBOOK}
    assert expected <= set(NAMES)
    assert NAMES[-1] == REPORT_NOTEBOOK  # the report collates the others, so it runs last


@pytest.mark.parametrize("name", NAMES)
def test_parameters_cell(name):
    notebook = nbformat.read(notebooks_dir() / f"{name}.ipynb", as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "papermill uses only the first cell tagged parameters"
    declared = papermill.inspect_notebook(str(notebooks_dir() / f"{name}.ipynb"))
    assert set(declared) >= COMMON_PARAMETERS
    assert declared["profile"]["default"] == '"smoke"'  # nbval runs the defaults: smoke must be the default
    assert all(p["inferred_type_name"] != "None" for p in declared.values()), "annotate every parameter"


@pytest.mark.parametrize("name", NAMES)
def test_checked_cells_carry_committed_outputs(name):
    """nbval compares a checked cell only if it was run and its output stored; otherwise it checks nothing."""
    notebook = nbformat.read(notebooks_dir() / f"{name}.ipynb", as_version=4)
    checked = [c for c in notebook.cells if c.cell_type == "code" and "# NBVAL_CHECK_OUTPUT" in c.source]
    assert checked, "every notebook regression-checks at least one numeric cell"
    for cell in checked:
        assert cell.execution_count is not None and cell.outputs, cell.source[:80]
        assert not any(o.get("output_type") == "error" for o in cell.outputs)


@pytest.mark.parametrize("name", NAMES)
def test_ipynb_matches_its_percent_script(name):
    """The .py is what reviewers read; the .ipynb is what runs. `jupytext --sync` keeps them equal."""
    script = jupytext.read(notebooks_dir() / f"{name}.py")
    notebook = nbformat.read(notebooks_dir() / f"{name}.ipynb", as_version=4)
    assert [c.source for c in script.cells] == [c.source for c in notebook.cells]
