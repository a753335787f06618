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


if __name__ == "__main__":
  absltest.main()
