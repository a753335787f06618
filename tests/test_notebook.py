"""Executes notebooks/quickstart.ipynb top to bottom with GMVQ_SMOKE=1, so it cannot rot."""

import copy
import os

from absl.testing import absltest
import nbclient
import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")
TIMEOUT_S = 600  # Per cell; a smoke cell takes seconds, a loaded CI machine more.


def _kernel_env():
  """The test process's environment with smoke runs and fast XLA compiles, one CPU device."""
  env = copy.deepcopy(dict(os.environ))
  env["GMVQ_SMOKE"] = "1"
  env["JAX_PLATFORMS"] = "cpu"
  # conftest's fake devices are for multi-device tests; the notebook runs as a user's
  # would, on one device. Optimisation level 0 compiles the tiny models ~2x faster.
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
  return env


class QuickstartNotebookTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    with open(NOTEBOOK, encoding="utf-8") as f:
      cls.notebook = nbformat.read(f, as_version=4)
    client = nbclient.NotebookClient(
        cls.notebook, timeout=TIMEOUT_S, kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
    client.execute(env=_kernel_env())  # Raises CellExecutionError on the first failing cell.

  def code_cells(self):
    return [cell for cell in self.notebook.cells if cell.cell_type == "code"]

  def test_every_code_cell_ran_without_error(self):
    counts = [cell.execution_count for cell in self.code_cells()]
    self.assertNotIn(None, counts)
    self.assertEqual(counts, sorted(counts))
    for cell in self.code_cells():
      errors = [out for out in cell.outputs if out.output_type == "error"]
      self.assertEqual(errors, [], msg=cell.source[:80])

  def test_figure_cells_draw_pictures(self):
    figure_cells = [c for c in self.code_cells() if "figure" in c.metadata.get("tags", [])]
    sources = " ".join(c.source for c in figure_cells)
    # The pictures the issue asks for: reconstructions, code usage, KL-bits histogram.
    for needle in ("reconstruction", "code_counts", "KL of a token"):
      self.assertIn(needle, sources)
    for cell in figure_cells:
      pictures = [out for out in cell.outputs
                  if out.output_type == "display_data" and "image/png" in out.data]
      self.assertNotEmpty(pictures, msg=f"no image/png from the cell starting {cell.source[:60]!r}")

  def test_smoke_flag_reached_the_kernel(self):
    setup = next(c for c in self.code_cells() if "SMOKE =" in c.source)
    printed = "".join(out.get("text", "") for out in setup.outputs if out.output_type == "stream")
    self.assertIn("smoke run", printed)


if __name__ == "__main__":
  absltest.main()
