"""Checks --config=FILE[:VARIANT] and --config.FIELD=VALUE before absl parses them.

A missing or unloadable config file, or an unknown field, then fails with
one `error:` line (the closest known field names included) instead of the
config library's chained tracebacks. `--config.FIELD=None` (or `none`) sets
an optional field to None, which the config library's typed parsers refuse:
such flags are taken out of argv and applied once the config is loaded.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from typing import Any, Sequence

import ml_collections

from gmvq_jax import errors

NONE_VALUES = ("None", "none")


class ConfigFlagError(errors.UserError):
  """A --config flag names a file or field that does not exist."""


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def load_config_file(value: str, flag: str = "config") -> Any:
  """The config that `--FLAG=FILE[:VARIANT]` names; ConfigFlagError if it cannot be loaded."""
  path, _, variant = value.partition(":")
  if not os.path.exists(path):
    folder = os.path.dirname(path) or "."
    known = []
    if os.path.isdir(folder):
      known = sorted(os.path.join(os.path.dirname(path), n) for n in os.listdir(folder)
                     if n.endswith(".py") and not n.startswith("_"))
    close = difflib.get_close_matches(path, known, n=3, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else (
        f"; config files there: {', '.join(known)}" if known else "")
    raise ConfigFlagError(f"--{flag}={value}: no such file {path}{hint}.")
  if os.path.isdir(path):
    raise ConfigFlagError(f"--{flag}={value}: {path} is a directory; name a config file in it,"
                          f" e.g. --{flag}={os.path.join(path, 'gmvq_demo.py')}.")
  spec = importlib.util.spec_from_file_location(f"_{flag}_preflight", path)
  try:
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()
  except Exception as error:  # The user's file: anything can go wrong in it.
    raise ConfigFlagError(f"--{flag}={value}: loading the config failed"
                          f" ({_first_line(error)}).") from error


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
  paths = []
  for key, value in node.items():
    path = f"{prefix}{key}"
    paths.append(path)
    if isinstance(value, ml_collections.ConfigDict):
      paths.extend(_leaf_paths(value, f"{path}."))
  return paths


def check_field(config: Any, field: str, flag: str = "config") -> None:
  """Raises ConfigFlagError naming the closest known fields when `field` is not in `config`."""
  node, walked = config, []
  for part in field.split("."):
    if isinstance(node, ml_collections.ConfigDict) and part in node:
      node, walked = node[part], walked + [part]
      continue
    where = ".".join([flag] + walked)
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigFlagError(f"--{flag}.{field}: {where} is a value, not a group of fields.")
    here = [".".join(walked + [key]) for key in
            difflib.get_close_matches(part, list(node.keys()), n=3, cutoff=0.6)]
    everywhere = _leaf_paths(config)
    names = difflib.get_close_matches(part, {p.split(".")[-1] for p in everywhere}, cutoff=0.75)
    close = here + [p for p in everywhere if p.split(".")[-1] in names and p not in here]
    hint = (f"closest known: {', '.join(f'{flag}.{c}' for c in close[:3])}" if close
            else f"fields of {where}: {', '.join(sorted(node.keys()))}")
    raise ConfigFlagError(f"--{flag}.{field}: {where} has no field {part!r}; {hint}.")


def preflight(argv: Sequence[str],
              flag_names: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Checks the config flags of `argv`.

  Returns:
    argv without its `--FLAG.FIELD=None` flags, and their (flag, field) pairs.

  Only the `--FLAG=FILE` and `--FLAG.FIELD=VALUE` forms are checked (and
  `--FLAG FILE`); absl reports anything else itself.
  """
  kept, nones = [argv[0]], []
  configs, overrides = {}, []
  args = list(argv[1:])
  index = 0
  while index < len(args):
    arg = args[index]
    index += 1
    if arg == "--":
      kept.extend(args[index - 1:])
      break
    kept.append(arg)
    for flag in flag_names:
      if arg == f"--{flag}" and index < len(args):
        configs[flag] = args[index]
      elif arg.startswith(f"--{flag}="):
        configs[flag] = arg.split("=", 1)[1]
      elif arg.startswith((f"--{flag}.", f"--no{flag}.")):
        name, has_value, value = arg.lstrip("-").partition("=")
        field = name.split(".", 1)[1]
        overrides.append((flag, field))
        if has_value and value in NONE_VALUES:
          kept.pop()
          nones.append((flag, field))
  loaded = {flag: load_config_file(value, flag) for flag, value in configs.items()}
  for flag, field in overrides:
    if flag in loaded and "[" not in field:
      check_field(loaded[flag], field, flag)
  return kept, nones


def set_none(config: ml_collections.ConfigDict, field: str) -> None:
  """Sets the dotted `field` of `config` to None."""
  *parents, last = field.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[last] = None
