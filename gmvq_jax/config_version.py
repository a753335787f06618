"""The config format's version, and the refusal of saved runs whose field names it no longer reads.

A config's `config_version` says which field names it uses; a saved config
without one is version 1. Version 2 renamed quantizer fields (each quantizer
`Config.renamed` lists its own): a run saved with an old name is refused in
one line naming the rename, since its checkpoint would not mean the same.
"""

from __future__ import annotations

import ml_collections

from gmvq_jax import errors
from gmvq_jax import methods

CURRENT = 2
FIRST = 1  # The version of configs saved before the field existed.
# Top-level fields added after runs were saved without them, each with the
# value that reproduces what such a run did; `upgrade` fills them in.
ADDED_FIELDS = {"prng_impl": "threefry2x32", "conv_impl": "xla"}


class ConfigVersionError(errors.UserError, ValueError):
  """A saved config uses field names of another config version."""


def version(config: ml_collections.ConfigDict) -> int:
  """The config version a (saved) config was written in."""
  return config.get("config_version", FIRST)


def renamed_fields(config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  """(old, new) quantizer field names that `config.quantizer` still uses the old name of."""
  if config.get("method") not in methods.METHODS or "quantizer" not in config:
    return []
  renamed = methods.get(config.method).quantizer_module().Config.renamed
  return [(old, renamed[old]) for old in config.quantizer if old in renamed]


def upgrade(saved: ml_collections.ConfigDict, where: str) -> ml_collections.ConfigDict:
  """`saved` as a config of version CURRENT, or ConfigVersionError when it cannot be one.

  A config of an older version whose fields all keep their names reads as
  it is (with config_version CURRENT); one with a renamed field is refused.
  A field of ADDED_FIELDS that the saved config lacks gets the value that
  reproduces the run (e.g. prng_impl 'threefry2x32', the only one before).

  Args:
    saved: a config read back from a run (checkpoint or result file).
    where: the file or directory it came from, for the message.
  """
  made_in = version(saved)
  if made_in > CURRENT:
    raise ConfigVersionError(
        f"{where} was made by gmvq_jax config version {made_in}; this gmvq_jax reads version"
        f" {CURRENT} and older. Use the gmvq_jax that made it.")
  if made_in == CURRENT:
    return _with_added_fields(saved)
  renamed = renamed_fields(saved)
  if renamed:
    module = methods.get(saved.method).module
    names = "; ".join(f"field quantizer.{old} of {module} is now quantizer.{new}"
                      for old, new in renamed)
    raise ConfigVersionError(
        f"{where}: this run was made by gmvq_jax config version {made_in}; {names} (config"
        f" version {CURRENT}). Train it again in a new --workdir, or use the gmvq_jax that made"
        " it.")
  upgraded = ml_collections.ConfigDict(saved.to_dict())
  upgraded.config_version = CURRENT
  return _with_added_fields(upgraded)


def _with_added_fields(saved: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  missing = {name: value for name, value in ADDED_FIELDS.items() if name not in saved}
  if not missing:
    return saved
  filled = ml_collections.ConfigDict(saved.to_dict())
  for name, value in missing.items():
    setattr(filled, name, value)
  return filled
