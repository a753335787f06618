"""Which examples a training batch holds: per-epoch shuffles and per-host slices.

Shared by every finite dataset (TFDS, image folders, .npz files), so all of
them order, resume and split batches across hosts the same way.
"""

from __future__ import annotations

import threading
from typing import Iterator, Sequence

import numpy as np

# Rebuilding a 1.3M-index permutation costs tens of milliseconds per step;
# a batch touches at most two epochs at a time, so two cached ones suffice.
_CACHED_EPOCHS = 2


def check_int(value, what: str, minimum: int = 0) -> int:
  """`value` as an int; raises ValueError unless it is an integer >= minimum."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def shard_rows(batch_size: int, shard: int, num_shards: int) -> range:
  """The rows of a global batch that host `shard` of `num_shards` reads.

  Args:
    batch_size: the global batch size, over all hosts.
    shard: this host's index, 0 <= shard < num_shards (jax.process_index()).
    num_shards: the number of hosts (jax.process_count()).

  Returns:
    range(shard * b, (shard + 1) * b) with b = batch_size // num_shards.

  Raises:
    ValueError: batch_size does not divide by num_shards, or shard is out of range.
  """
  batch_size = check_int(batch_size, "batch_size", 1)
  num_shards = check_int(num_shards, "num_shards", 1)
  shard = check_int(shard, "shard")
  if shard >= num_shards:
    raise ValueError(
        f"shard={shard} is out of range for num_shards={num_shards}; pass"
        f" 0 <= shard < num_shards (this host's jax.process_index()).")
  if batch_size % num_shards:
    raise ValueError(
        f"The global batch_size={batch_size} does not divide by num_shards={num_shards};"
        f" make batch_size a multiple of the number of hosts.")
  rows = batch_size // num_shards
  return range(shard * rows, (shard + 1) * rows)


class EpochShuffler:
  """A fresh random order of N examples every epoch, with no iterator state.

  Example number `k = step * batch_size + i` of the run is position `k % N`
  of epoch `k // N`'s permutation `np.random.default_rng((seed, epoch))
  .permutation(N)`. So every epoch visits each example once, a batch may
  straddle two epochs, and a resumed run sees bit-identical batches.
  """

  def __init__(self, num_examples: int, seed: int):
    """Fixes the order; permutations are built lazily.

    Args:
      num_examples: N, the size of the split being shuffled (>= 1).
      seed: selects the permutations (>= 0).
    """
    self.num_examples = check_int(num_examples, "num_examples", 1)
    self.seed = check_int(seed, "seed")
    self._permutations: dict[int, np.ndarray] = {}
    # train_lib reads the next batch on a host thread; the cache is shared.
    self._lock = threading.Lock()

  def permutation(self, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s order: (N,) int64, a permutation of range(N); read-only."""
    with self._lock:
      if epoch not in self._permutations:
        if len(self._permutations) >= _CACHED_EPOCHS:
          self._permutations.pop(min(self._permutations))
        order = np.random.default_rng((self.seed, epoch)).permutation(self.num_examples)
        order.setflags(write=False)
        self._permutations[epoch] = order
      return self._permutations[epoch]

  def indices(self, step: int, batch_size: int, *, shard: int = 0,
              num_shards: int = 1) -> np.ndarray:
    """Example indices of (one host's slice of) training batch `step`.

    Args:
      step: training step, >= 0.
      batch_size: the global batch size.
      shard: which slice, see `shard_rows`.
      num_shards: how many slices the global batch is cut into.

    Returns:
      (batch_size // num_shards,) int64: rows shard_rows(...) of the global batch.
    """
    step = check_int(step, "step")
    rows = shard_rows(batch_size, shard, num_shards)
    positions = step * batch_size + np.arange(rows.start, rows.stop, dtype=np.int64)
    epochs, offsets = np.divmod(positions, self.num_examples)
    indices = np.empty(len(rows), np.int64)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      indices[here] = self.permutation(int(epoch))[offsets[here]]
    return indices

  def position(self, step: int, batch_size: int) -> dict[str, int]:
    """Where training batch `step` starts, i.e. the progress after `step` steps.

    Returns:
      A JSON-able dict: examples_seen (step * batch_size), epoch (the epoch
      that batch `step` starts in) and index_in_epoch (its position there).
    """
    step = check_int(step, "step")
    batch_size = check_int(batch_size, "batch_size", 1)
    examples_seen = step * batch_size
    epoch, index_in_epoch = divmod(examples_seen, self.num_examples)
    return dict(examples_seen=examples_seen, epoch=epoch, index_in_epoch=index_in_epoch)


class ShuffledSplits:
  """The ImageDataset methods of a finite dataset with a train and a test split.

  A subclass sets the fields below (`_shuffler` over the training split) and
  implements `_read(split, indices)`; TFDS, folder and .npz datasets share
  everything else, so they shuffle, shard, resume and evaluate alike.
  """

  image_size: int
  image_shape: tuple[int, int, int]
  seed: int
  num_train_examples: int
  num_eval_examples: int
  _shuffler: EpochShuffler

  def _read(self, split: str, indices: Sequence[int]) -> np.ndarray:
    """Images `indices` of `split` as (len(indices), H, W, 3) float32 in [0, 1]."""
    raise NotImplementedError

  def train_indices(self, step: int, batch_size: int, *, shard: int = 0,
                    num_shards: int = 1) -> np.ndarray:
    """Training-split indices of (one host's slice of) batch `step`; see EpochShuffler.

    Returns:
      (batch_size // num_shards,) int64.
    """
    return self._shuffler.indices(step, batch_size, shard=shard, num_shards=num_shards)

  def train_batch(self, step: int, batch_size: int, *, shard: int = 0,
                  num_shards: int = 1) -> np.ndarray:
    """(One host's slice of) training batch `step`, a pure function of (seed, step, batch_size).

    Args:
      step: training step, >= 0.
      batch_size: images per global batch, over all hosts.
      shard: this host's index, 0 <= shard < num_shards.
      num_shards: the number of hosts; batch_size must divide by it.

    Returns:
      (batch_size // num_shards, H, W, 3) float32 in [0, 1]: rows
      [shard * b, (shard + 1) * b) of the global batch; only those are read.
    """
    indices = self.train_indices(step, batch_size, shard=shard, num_shards=num_shards)
    return self._read("train", indices)

  def position(self, step: int, batch_size: int) -> dict[str, int]:
    """Progress before batch `step`: dict(examples_seen=..., epoch=..., index_in_epoch=...)."""
    return self._shuffler.position(step, batch_size)

  def _in_order(self, split: str, total: int, batch_size: int) -> Iterator[np.ndarray]:
    batch_size = check_int(batch_size, "batch_size", 1)  # Now, not at the first next().
    return (self._read(split, range(start, min(start + batch_size, total)))
            for start in range(0, total, batch_size))

  def train_split_batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """The whole training split in order (not shuffled), e.g. to tokenize it.

    Returns:
      An iterator of (b, H, W, 3) float32 in [0, 1]; the last batch may be smaller.
    """
    return self._in_order("train", self.num_train_examples, batch_size)

  def eval_batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """The first num_eval_examples of the test split, in order.

    Returns:
      An iterator of (b, H, W, 3) float32 in [0, 1]; b == batch_size except
      possibly for the last batch.
    """
    return self._in_order("test", self.num_eval_examples, batch_size)
