"""Which examples a training batch holds: per-epoch shuffles, per-host slices, held-out splits.

Shared by every finite dataset (TFDS, image folders, .npz files), so all of
them order, resume, split batches across hosts and hold out a validation
split the same way.
"""

from __future__ import annotations

import threading
from typing import Iterator, Sequence

import numpy as np

# Rebuilding a 1.3M-index permutation costs tens of milliseconds per step;
# a batch touches at most two epochs at a time, so two cached ones suffice.
_CACHED_EPOCHS = 2
# The splits `eval_batches` serves: "val" to choose hyperparameters on, "test"
# for the figures reported (never tuned on). registry.EVAL_SPLITS is this.
EVAL_SPLITS = ("val", "test")
# The TFDS datasets (tfds_source serves them); here so that the registry
# and tfds_source need not import each other.
TFDS_DATASET_NAMES = ("cifar10", "celeb_a", "imagenet2012")
# A source without a validation split of its own holds out the last tenth of
# its training split, at most MAX_HELD_OUT_TFDS examples for the TFDS datasets.
HELD_OUT_FRACTION_DIVISOR = 10
MAX_HELD_OUT_TFDS = 10_000


def check_int(value, what: str, minimum: int = 0) -> int:
  """`value` as an int; raises ValueError unless it is an integer >= minimum."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def check_eval_split(split) -> str:
  """`split` if it is one of EVAL_SPLITS; else ValueError naming the allowed values."""
  if not isinstance(split, str) or split not in EVAL_SPLITS:
    allowed = ", ".join(repr(name) for name in EVAL_SPLITS)
    raise ValueError(f"Unknown evaluation split {split!r}; allowed values are {allowed}.")
  return split


def held_out_size(num_train: int, maximum: int | None = None) -> int:
  """How many of `num_train` training examples a source without its own validation split holds out.

  max(1, min(num_train // 10, maximum)): a tenth rounded down, capped at
  `maximum` (None: no cap), and at least one. cifar10's 50,000 give 5,000;
  ImageNet's 1,281,167 give 10,000 with maximum=MAX_HELD_OUT_TFDS.
  """
  size = check_int(num_train, "num_train", 0) // HELD_OUT_FRACTION_DIVISOR
  if maximum is not None:
    size = min(size, maximum)
  return max(1, size)


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
  """The ImageDataset methods of a finite dataset with train, val and test splits.

  A subclass reads its sources with `_read(source, indices)` (sources
  "train", "test" and, if it has a validation split of its own, "val") and
  calls `_set_splits` once it knows their sizes; TFDS, folder and .npz
  datasets share everything else, so they shuffle, shard, resume, hold out
  and evaluate alike.

  A source without a validation split holds out a fixed slice of its
  training split instead: the last `held_out` examples. Training batches,
  `train_split_batches` and `num_train_examples` then cover only the
  examples before that slice, so no validation example is ever trained on.
  """

  image_size: int
  image_shape: tuple[int, int, int]
  seed: int
  num_train_examples: int  # The part of the training source that is trained on.
  num_val_examples: int  # The val examples eval_batches(..., split="val") covers.
  num_eval_examples: int  # The test examples eval_batches(...) covers; set by the subclass.
  _shuffler: EpochShuffler
  # Where each split lies in the sources: split -> (source, start, stop).
  _spans: dict[str, tuple[str, int, int]]

  def _read(self, source: str, indices: Sequence[int]) -> np.ndarray:
    """Examples `indices` of `source` as (len(indices), H, W, 3) float32 in [0, 1]."""
    raise NotImplementedError

  def _set_splits(self, *, train_size: int, test_size: int, val_size: int | None,
                  held_out: int, num_eval_examples: int | None) -> None:
    """Fixes where the splits lie, num_train_examples, num_val_examples and the training shuffle.

    Args:
      train_size: examples in the "train" source (>= 1).
      test_size: examples in the "test" source.
      val_size: examples in the "val" source, or None when there is none:
        then the validation split is the last `held_out` training examples.
      held_out: see val_size; unused when val_size is given.
      num_eval_examples: the cap on evaluated examples (None: no cap); the
        val split evaluates min(cap, its size). The subclass checks it and
        sets num_eval_examples (the test split's) itself.

    Raises:
      ValueError: holding out `held_out` examples would leave none to train on.
    """
    train_size = check_int(train_size, "train_size", 1)
    if val_size is None:
      held_out = check_int(held_out, "held_out", 1)
      if held_out >= train_size:
        raise ValueError(
            f"A training split of {train_size} example(s) cannot hold out {held_out} for"
            " validation and keep any to train on.")
      num_train = train_size - held_out
      self._spans = {"train": ("train", 0, num_train), "val": ("train", num_train, train_size)}
    else:
      num_train = train_size
      self._spans = {"train": ("train", 0, num_train),
                     "val": ("val", 0, check_int(val_size, "val_size", 1))}
    self._spans["test"] = ("test", 0, check_int(test_size, "test_size", 1))
    val_total = self._spans["val"][2] - self._spans["val"][1]
    self.num_train_examples = num_train
    self.num_val_examples = val_total if num_eval_examples is None else min(
        check_int(num_eval_examples, "num_eval_examples", 1), val_total)
    self._shuffler = EpochShuffler(num_train, self.seed)

  def _read_split(self, split: str, indices: Sequence[int]) -> np.ndarray:
    """Examples `indices` of split "train", "val" or "test", read from their source."""
    source, start, _ = self._spans[split]
    return self._read(source, np.asarray(indices, np.int64) + start)

  def train_indices(self, step: int, batch_size: int, *, shard: int = 0,
                    num_shards: int = 1) -> np.ndarray:
    """Training-split indices of (one host's slice of) batch `step`; see EpochShuffler.

    Returns:
      (batch_size // num_shards,) int64, each in [0, num_train_examples).
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
    return self._read_split("train", indices)

  def position(self, step: int, batch_size: int) -> dict[str, int]:
    """Progress before batch `step`: dict(examples_seen=..., epoch=..., index_in_epoch=...)."""
    return self._shuffler.position(step, batch_size)

  def _in_order(self, split: str, total: int, batch_size: int) -> Iterator[np.ndarray]:
    batch_size = check_int(batch_size, "batch_size", 1)  # Now, not at the first next().
    return (self._read_split(split, range(start, min(start + batch_size, total)))
            for start in range(0, total, batch_size))

  def train_split_batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """The whole training split in order (not shuffled), e.g. to tokenize it.

    Only the num_train_examples trained on: a held-out validation slice is
    not part of it.

    Returns:
      An iterator of (b, H, W, 3) float32 in [0, 1]; the last batch may be smaller.
    """
    return self._in_order("train", self.num_train_examples, batch_size)

  def eval_batches(self, batch_size: int, split: str = "test") -> Iterator[np.ndarray]:
    """The first num_eval_examples of the test split (or num_val_examples of val), in order.

    Args:
      batch_size: images per batch.
      split: "test" (the figures reported) or "val" (for choosing
        hyperparameters); see EVAL_SPLITS.

    Returns:
      An iterator of (b, H, W, 3) float32 in [0, 1]; b == batch_size except
      possibly for the last batch. The same batches on every call and seed.

    Raises:
      ValueError: `split` is not in EVAL_SPLITS, or a bad batch_size (at once).
    """
    split = check_eval_split(split)
    total = self.num_eval_examples if split == "test" else self.num_val_examples
    return self._in_order(split, total, batch_size)
