"""Builds a TFDS dataset as ArrayRecord files: `python -m launch.prepare_data --dataset=cifar10`.

Run once, on a machine with internet access, then train with the same
--data_dir as config.data_dir. Building needs TensorFlow (the 'prepare' extra:
`pip install -e '.[prepare]'`); reading the result does not.
"""

from __future__ import annotations

import importlib
import os

from absl import flags
from etils import epath
import tensorflow_datasets as tfds

from gmvq_jax import errors
from gmvq_jax import io as io_lib
from gmvq_jax.data import tfds_source
from launch import common

_DATASET = flags.DEFINE_string(
    "dataset", None, f"TFDS dataset to build: one of {', '.join(tfds_source.TFDS_NAMES)}.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None,
    "TFDS data_dir to build it in, later passed as config.data_dir; default: $TFDS_DATA_DIR"
    " or ~/tensorflow_datasets.")
flags.mark_flags_as_required(["dataset"])

# What building needs beyond the library's own requirements. importlib_resources
# is a TFDS build dependency that the tensorflow-datasets wheel does not declare.
BUILD_MODULES = ("tensorflow", "importlib_resources")
_MAX_CAUSE_CHARS = 300  # Of the underlying error, quoted in the one-line message.


class PrepareError(errors.UserError):
  """Preparing failed or cannot start; the message is one line saying what to do."""


def _missing_build_modules() -> list[str]:
  missing = []
  for module in BUILD_MODULES:
    try:
      importlib.import_module(module)
    except Exception:  # A broken install can raise more than ImportError.
      missing.append(module)
  return missing


def _cause(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else ""
  if len(text) > _MAX_CAUSE_CHARS:
    text = text[:_MAX_CAUSE_CHARS] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def prepare(name: str, data_dir: str | None) -> str:
  """Builds `name` as ArrayRecord files under `data_dir`, unless it is there already.

  Existing data is never modified: TFDS builds into a temporary folder and
  renames it only on success.

  Args:
    name: one of tfds_source.TFDS_NAMES.
    data_dir: TFDS data_dir; None for TFDS's default.

  Returns:
    A line saying what was done and which config.data_dir to train with.

  Raises:
    PrepareError: unknown name, data in the way, TensorFlow missing, ImageNet
      archives missing, or the download/build failed.
  """
  if name not in tfds_source.TFDS_NAMES:
    allowed = ", ".join(repr(n) for n in tfds_source.TFDS_NAMES)
    raise PrepareError(
        f"Unknown dataset {name!r}; launch.prepare_data builds the TFDS datasets {allowed}."
        " ('embedded' needs no preparation; 'folder' and 'npz' read your own files directly.)")
  if data_dir is not None and io_lib.is_local(data_dir):  # gs://... is passed as it is.
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
  # Without file_format, the builder reports the formats already on disk.
  existing = tfds.builder(name, data_dir=data_dir)
  root, path = os.fspath(existing.data_dir_root), os.fspath(existing.data_path)
  # TFDS skips building whenever this version's folder exists, so whatever is
  # there decides. (Checked first: is_prepared() warns about absent folders.)
  if epath.Path(path).exists():
    if not existing.is_prepared():
      raise PrepareError(
          f"{path} exists but holds no complete dataset (no dataset_info.json; an interrupted"
          " copy?), and TFDS would skip building over it: remove that folder, then rerun.")
    formats = existing.info.available_file_formats()
    if tfds.core.FileFormat.ARRAY_RECORD in formats:
      return (f"{name} is already prepared as ArrayRecord files in {path}; nothing to do."
              f" Train with config.data_dir={root!r}.")
    found = ", ".join(sorted(f.value for f in formats)) or "no known format"
    raise PrepareError(
        f"{path} already holds {name} as {found}, not as the ArrayRecord files gmvq_jax reads,"
        " and TFDS does not build over an existing version: move that folder aside or pass"
        " another --data_dir, then rerun.")
  if name == "imagenet2012":
    manual = tfds_source.manual_dir(root)
    absent = [f for f in tfds_source.IMAGENET_MANUAL_FILES
              if not (epath.Path(manual) / f).exists()]
    if absent:
      raise PrepareError(" ".join(tfds_source.download_notes(name, root))
                         + f" Missing: {', '.join(absent)}.")
  missing = _missing_build_modules()
  if missing:
    raise PrepareError(
        f"Building {name} needs TensorFlow (reading it later does not), and"
        f" {', '.join(missing)} cannot be imported here: pip install -e '.[prepare]'"
        " (or pip install tensorflow importlib_resources), then rerun.")

  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  try:
    builder.download_and_prepare()
  except Exception as error:  # Network, quota, disk, ...: one line, not a traceback.
    notes = " ".join(tfds_source.download_notes(name, root))
    raise PrepareError(
        f"Building {name} in {root} failed ({_cause(error)}). Building downloads the source"
        " files, so check internet access and free disk space, then rerun: finished"
        f" downloads in {os.path.join(root, 'downloads')} are reused, and nothing was"
        f" written to {path}. {notes}".strip()) from error
  return f"Prepared {name} as ArrayRecord files in {path}. Train with config.data_dir={root!r}."


def main(argv):
  with common.launched(argv, rerun="Rerun the same command: finished downloads are reused."):
    with errors.activity(f"preparing {_DATASET.value}"):
      print(prepare(_DATASET.value, _DATA_DIR.value))


if __name__ == "__main__":
  common.run(main)
