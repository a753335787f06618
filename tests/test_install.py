"""Installing gmvq_jax keeps an installed JAX that setup.py's range admits (Colab's GPU/TPU build).

Colab's runtime comes with a JAX built for its accelerator, often newer than
any release this project was tested with. The notebook installs the library
with a plain `pip install -e REPO`: pip's default `--upgrade-strategy
only-if-needed` keeps every installed package that satisfies a requirement,
so that JAX stays exactly when setup.py's range admits it; an upper cap below
it would replace it with a CPU-only wheel (and break its plugin).

The tests ask pip's own resolver, without installing anything and without
network, what `pip install` of setup.py's requirements would install here:
`--dry-run --report` writes the to-install list, and `--no-index` leaves the
installed distributions as the only candidates, so a requirement they do not
satisfy fails the run instead of downloading. A newer JAX is stood in for by
a `jax-<version>.dist-info` folder (metadata only) first on PYTHONPATH, which
pip then sees as the installed JAX; the control shows a cap below it would
make pip replace it.
"""

import ast
import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
import jax
import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


def install_requires():
  """setup.py's INSTALL_REQUIRES, read without running setup.py."""
  with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["INSTALL_REQUIRES"]:
      return ast.literal_eval(node.value)
  raise AssertionError("setup.py has no INSTALL_REQUIRES list")


def newer_jax_version():
  """The next minor release after the installed JAX, e.g. 0.10.2 -> 0.11.0."""
  major, minor = (int(part) for part in jax.__version__.split(".")[:2])
  return f"{major}.{minor + 1}.0"


def dry_run(requirements, workdir, pythonpath=None):
  """(returncode, names pip would install, stderr) of an offline `pip install --dry-run`."""
  report = os.path.join(workdir, "report.json")
  if os.path.exists(report):
    os.remove(report)
  env = dict(os.environ)
  if pythonpath:  # First on sys.path, so pip sees its distributions as the installed ones.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
  result = subprocess.run(
      # --isolated: setup.py's ranges alone, without a PIP_CONSTRAINT (CI's oldest
      # environment pins JAX) or pip configuration of this machine.
      [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "install",
       "--dry-run", "--no-index", "--quiet", "--report", report, *requirements],
      env=env, cwd=workdir, capture_output=True, text=True, timeout=300, check=False)
  names = []
  if result.returncode == 0:
    with open(report, encoding="utf-8") as f:
      names = [item["metadata"]["name"].lower() for item in json.load(f)["install"]]
  return result.returncode, names, result.stderr


class InstallKeepsJaxTest(absltest.TestCase):

  def test_installed_jax_satisfies_setup_py(self):
    with tempfile.TemporaryDirectory() as workdir:
      returncode, names, stderr = dry_run(install_requires(), workdir)
    self.assertEqual(returncode, 0, stderr)
    self.assertEqual(names, [], "pip would install or replace these here")

  def test_a_newer_jax_stays_installed(self):
    version = newer_jax_version()
    with tempfile.TemporaryDirectory() as workdir:
      shadow = os.path.join(workdir, "site")
      os.makedirs(os.path.join(shadow, f"jax-{version}.dist-info"))
      with open(os.path.join(shadow, f"jax-{version}.dist-info", "METADATA"), "w",
                encoding="utf-8") as f:
        f.write(f"Metadata-Version: 2.1\nName: jax\nVersion: {version}\n")
      returncode, names, stderr = dry_run(install_requires(), workdir, pythonpath=shadow)
      self.assertEqual(returncode, 0, stderr)
      self.assertNotIn("jax", names)
      self.assertNotIn("jaxlib", names)
      # Control: pip sees the stand-in, and a cap below it would replace it.
      returncode, _, stderr = dry_run([f"jax<{version}"], workdir, pythonpath=shadow)
      self.assertNotEqual(returncode, 0)
      self.assertIn("jax", stderr)

  def test_notebook_install_cell_does_not_upgrade(self):
    with open(NOTEBOOK, encoding="utf-8") as f:
      notebook = nbformat.read(f, as_version=4)
    installs = [cell.source for cell in notebook.cells
                if cell.cell_type == "code" and '"pip", "install"' in cell.source]
    self.assertLen(installs, 1)
    for flag in ('"-U"', '"--upgrade"', "upgrade-strategy", "force-reinstall"):
      self.assertNotIn(flag, installs[0])


if __name__ == "__main__":
  absltest.main()
