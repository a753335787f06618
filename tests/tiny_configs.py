"""Small configs and data shared by the tests: seconds to compile, milliseconds to run."""

import os

import numpy as np

from configs import gmvq_demo
from configs import gq_demo
from gmvq_jax import methods


def tiny_config(**overrides):
  """The demo config shrunk: 16x16 crops, 8 images, 32 codes of dimension 8."""
  config = gmvq_demo.get_config("smoke")
  config.image_size = 16
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_eval_examples = 12  # Not a multiple of the eval batch: exercises padding.
  config.num_steps = 4
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.quantizer.num_codes = 32
  config.quantizer.latent_dim = 8
  config.quantizer.gamma = 0.48
  config.quantizer.kmeans_iters = 5
  return apply_overrides(config, overrides)


def method_config(method, **overrides):
  """A tiny config of any registered method: GQ's demo smoke config at 16x16, else tiny_config."""
  if method == "gq":
    config = gq_demo.get_config("smoke")
    config.image_size = 16
    config.num_eval_examples = 12
  else:
    config = tiny_config()
    if method != "gmvq":
      config.method = method
      config.quantizer = methods.quantizer_config(method, num_codes=16, latent_dim=4)
  return apply_overrides(config, overrides)


def snapshot(directory):
  """{relative path: bytes} of every file under `directory` (to check nothing changed)."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = f.read()
  return files


def apply_overrides(config, overrides):
  """Sets dotted fields, e.g. {"quantizer.beta": 2.0}, as --config.FIELD=VALUE would."""
  for field, value in overrides.items():
    node = config
    *path, last = field.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return config


class RandomImages:
  """A dataset stand-in with the `train_batch` interface: uniform noise images."""

  def __init__(self, size=16):
    self.image_shape = (size, size, 3)

  num_train_examples = None
  seed = 0

  def train_batch(self, step, batch_size, *, shard=0, num_shards=1):
    batch = np.random.default_rng(step).random((batch_size,) + self.image_shape, dtype=np.float32)
    rows = batch_size // num_shards
    return batch[shard * rows:(shard + 1) * rows]

  def position(self, step, batch_size):
    return dict(examples_seen=step * batch_size, epoch=None, index_in_epoch=None)
