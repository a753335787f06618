"""Every ```python snippet of the README and docs/ runs as written.

The snippets of one file run in order in one fresh process (one CPU device,
as a user's shell has), each in the namespace the earlier ones left, so a
page can build its example step by step. A snippet that fails names its file
and first line.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

from absl.testing import absltest
from absl.testing import parameterized

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def documents() -> list[str]:
  """README.md and every docs/*.md, relative to the repository root."""
  docs = sorted(os.path.join("docs", name) for name in os.listdir(os.path.join(REPO, "docs"))
                if name.endswith(".md"))
  return ["README.md"] + docs


def snippets(path: str) -> list[tuple[int, str]]:
  """(first line number, code) of each ```python block of a Markdown file."""
  with open(os.path.join(REPO, path), encoding="utf-8") as f:
    text = f.read()
  return [(text.count("\n", 0, match.start(1)) + 1, match.group(1))
          for match in _FENCE.finditer(text)]


_RUNNER = textwrap.dedent("""
    import json, sys, traceback
    namespace = {"__name__": "__snippet__"}
    for line, code in json.load(sys.stdin):
      try:
        exec(compile(code, f"{sys.argv[1]}:{line}", "exec"), namespace)
      except BaseException:
        traceback.print_exc()
        print(f"SNIPPET FAILED: {sys.argv[1]} line {line}", file=sys.stderr)
        sys.exit(1)
    """)


class DocSnippetTest(parameterized.TestCase):

  def test_the_readme_has_snippets(self):
    self.assertNotEmpty(snippets("README.md"))

  @parameterized.parameters(*[(path,) for path in documents()])
  def test_snippets_run(self, path):
    blocks = snippets(path)
    if not blocks:
      self.skipTest(f"{path} has no python snippets.")
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=4", "")
    result = subprocess.run([sys.executable, "-c", _RUNNER, path], input=json.dumps(blocks),
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                            check=False)
    self.assertEqual(result.returncode, 0, msg=result.stderr[-4000:])


_SKIPPED_DIRS = frozenset({"tests", "__pycache__", "workdirs", "build", "dist"})


def _project_text_files() -> list[str]:
  """The project's text files outside tests/, found on disk (CI runs from a copy without .git)."""
  found = []
  for root, dirs, names in os.walk(REPO):
    dirs[:] = [d for d in dirs if (d == ".ci" or not d.startswith(".")) and d not in _SKIPPED_DIRS
               and not d.endswith(".egg-info")]
    found += [os.path.relpath(os.path.join(root, name), REPO) for name in names
              if name.endswith((".py", ".md", ".json", ".ipynb", ".sh", ".txt", ".cfg", ".ini"))]
  return sorted(found)


class StandAloneTest(absltest.TestCase):
  """The repository stands alone: it cites the papers, not files a user does not have."""

  def test_no_internal_names_in_user_facing_files(self):
    # The spec's file name and its section numbers, the papers' file numbers.
    internal = re.compile(r"(?i:paper 00\d)|ALGORITHMS\.md|algorithms\.md §|\.\./shared/")
    found = []
    for path in _project_text_files():
      with open(os.path.join(REPO, path), encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
          if internal.search(line):
            found.append(f"{path}:{number}: {line.strip()[:100]}")
    self.assertEqual(found, [], "\n".join(found))

  def test_the_papers_are_cited_by_arxiv_id(self):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
      readme = f.read()
    for arxiv_id in ("2410.10180", "2512.06609"):
      self.assertIn(arxiv_id, readme)


class ConfigTablesTest(absltest.TestCase):
  """The README's config table and docs/quantizers.md list every field the code has."""

  def test_readme_lists_every_training_field(self):
    from configs import base  # pylint: disable=g-import-not-at-top
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
      readme = f.read()
    table = readme[readme.index("## Config fields"):]
    table = table[:table.index("\n## ", 1)]
    documented = set(re.findall(r"`([a-z_0-9.]+)`", table))

    def fields(config, prefix=""):
      for key, value in config.items():
        if key == "quantizer":
          continue
        if hasattr(value, "items"):
          yield from fields(value, f"{prefix}{key}.")
        else:
          yield f"{prefix}{key}"

    missing = sorted(set(fields(base.get_config())) - documented)
    self.assertEqual(missing, [], f"fields missing from the README's config table: {missing}")

  def test_quantizers_doc_lists_every_config_field(self):
    import dataclasses  # pylint: disable=g-import-not-at-top
    from gmvq_jax import methods  # pylint: disable=g-import-not-at-top
    with open(os.path.join(REPO, "docs", "quantizers.md"), encoding="utf-8") as f:
      doc = f.read()
    tables = doc[doc.index("## Each method's"):]
    documented = set(re.findall(r"`([a-z_0-9]+)`", tables))
    missing = sorted({f"{method.module}.{field.name}" for method in methods.METHODS.values()
                      for field in dataclasses.fields(method.quantizer_module().Config)
                      if field.name not in documented})
    self.assertEqual(missing, [], f"fields missing from docs/quantizers.md: {missing}")


if __name__ == "__main__":
  absltest.main()
