"""No import cycles in the package; only the registry and quantizer modules name a method."""

import ast
import os
import re

from absl.testing import absltest

from gmvq_jax import methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "gmvq_jax")


def _modules():
  """{dotted name: path} of every module of the package."""
  found = {}
  for root, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
        found[relative.removesuffix(".__init__")] = path
  return found


def _imports(path, modules):
  """The package modules `path` imports, at any depth of its code (lazy imports too)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(alias.name for alias in node.names if alias.name in modules)
    elif isinstance(node, ast.ImportFrom) and node.module:
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        out.add(full if full in modules else node.module)
  return {name for name in out if name in modules}


class ImportGraphTest(absltest.TestCase):

  def test_no_module_imports_itself_through_others(self):
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # A package's __init__ re-exports its modules; importing it is importing them.
    for name in graph:
      for other in list(graph[name]):
        if other != name and other in graph and name.startswith(other + "."):
          graph[name].discard(other)  # A submodule importing its own package.
    cycles = []

    def visit(node, path, on_path):
      for nxt in sorted(graph[node]):
        if nxt in on_path:
          cycles.append(path[path.index(nxt):] + [nxt])
        elif nxt not in done:
          on_path.add(nxt)
          visit(nxt, path + [nxt], on_path)
          on_path.discard(nxt)
      done.add(node)

    done = set()
    for start in sorted(graph):
      if start not in done:
        visit(start, [start], {start})
    self.assertEqual(cycles, [])

  def test_method_names_only_in_the_registry_and_quantizer_modules(self):
    names = "|".join(sorted(methods.NAMES, key=len, reverse=True))
    pattern = re.compile(rf"[\"']({names})[\"']")
    offenders = []
    for name, path in _modules().items():
      if name == "gmvq_jax.methods" or name.startswith("gmvq_jax.quantizers."):
        continue
      with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
          if pattern.search(line):
            offenders.append(f"{name}:{number}: {line.strip()}")
    self.assertEqual(offenders, [])

  def test_no_comparison_with_a_method_or_module_name_outside_the_registry(self):
    """`if config.method == 'gmvq'`-style branches belong in the method's Quantizer record."""
    names = set(methods.NAMES) | {method.module for method in methods.METHODS.values()}
    offenders = []
    for folder in ("gmvq_jax", "launch", "experiments", "configs"):
      for root, _, files in os.walk(os.path.join(ROOT, folder)):
        for file_name in files:
          path = os.path.join(root, file_name)
          relative = os.path.relpath(path, ROOT)
          if (not file_name.endswith(".py") or relative == os.path.join("gmvq_jax", "methods.py")
              or relative.startswith(os.path.join("gmvq_jax", "quantizers"))):
            continue
          with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
          for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
              operands = [node.left, *node.comparators]
              strings = {o.value for o in operands
                         if isinstance(o, ast.Constant) and isinstance(o.value, str)}
              for o in operands:  # `x in ("gq", "gmvq")`
                if isinstance(o, (ast.Tuple, ast.List, ast.Set)):
                  strings |= {e.value for e in o.elts if isinstance(e, ast.Constant)}
              if strings & names:
                offenders.append(f"{relative}:{node.lineno}")
    self.assertEqual(offenders, [])


if __name__ == "__main__":
  absltest.main()
