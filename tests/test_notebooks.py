"""Every notebook in nbs/ runs top to bottom (nbclient), at tiny settings injected after its
``parameters`` cell, as papermill does; and is committed with its outputs stripped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NBS = sorted((Path(__file__).resolve().parents[1] / "nbs").glob("*.ipynb"))
# seconds, not minutes: the synthetic set small, one or two short epochs
TINY = """DATA = None
N_IDENTITIES, IMAGES_PER_IDENTITY = 12, 6
IMG_SIZE, BS, EPOCHS = 32, 16, 1
ARCH, EMB_DIM = "resnet18", 32
LR_FIND_ITERS = 8
"""
TINY_BY_NOTEBOOK = {
    "02_reuse_the_pieces": "EPOCHS = 1\n",
    "03_what_the_losses_do": "EPOCHS = 1\nRUN_EPOCHS, RUN_IMG_SIZE = 1, 32\n",
}


def _parameters_cell(nb) -> int:
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return i
    raise AssertionError("no cell tagged 'parameters'")


@pytest.mark.parametrize("path", NBS, ids=[p.stem for p in NBS])
def test_the_notebook_is_committed_without_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NBS, ids=[p.stem for p in NBS])
def test_the_notebook_runs_top_to_bottom(path, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    tiny = TINY_BY_NOTEBOOK.get(path.stem, TINY)
    nb.cells.insert(_parameters_cell(nb) + 1, nbformat.v4.new_code_cell(tiny))
    env = {
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "FVLOSS_CACHE": str(tmp_path / "cache"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures as outputs
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits them
    try:  # an exception in any cell fails the test, naming the cell
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]  # fmt: skip
    assert images, "the notebook drew no figure"
