"""The quickstart notebook runs top to bottom (with few steps) so it never rots."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

pytestmark = pytest.mark.slow  # a Jupyter kernel


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
  monkeypatch.setenv("QUICKSTART_STEPS", "20")
  monkeypatch.setenv("QUICKSTART_MODEL_DIR", str(tmp_path / "run"))
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(os.path.join(REPO, "notebooks", "quickstart.ipynb"), as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "trained 20 steps" in outputs and "logits (1, 6, 68)" in outputs
  assert (tmp_path / "run" / "metrics.jsonl").exists()
