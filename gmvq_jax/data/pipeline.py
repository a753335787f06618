"""The training input pipeline: a resumable iterator with host and device prefetch.

Every dataset serves `train_batch(step, batch_size, shard=, num_shards=)`, a
pure function of (seed, step, global batch size), so the pipeline's whole
state is the step of the next batch. `TrainIterator` walks those steps,
reads this process's rows on background threads, places them on the devices
ahead of use, and reports its position for the checkpoint; a resumed run
builds it at the restored step and continues with exactly the next batch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import threading
from typing import Any, Callable, Iterator

import numpy as np

from gmvq_jax import errors

# Batches read and placed ahead of the one in use: one overlaps the step
# that runs, the second absorbs jitter in read times.
DEFAULT_PREFETCH = 2
_POLL_SECONDS = 0.1


def padded_batches(batches: Iterator[np.ndarray],
                   batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
  """Each batch zero-padded to `batch_size` rows, so one compiled step serves them all.

  Yields:
    `(padded, mask, real)`: (batch_size, ...) rows, of which the first `real`
    are the batch's; mask (batch_size,) float32, 1 on those rows.
  """
  for batch in batches:
    real = batch.shape[0]
    mask = (np.arange(batch_size) < real).astype(np.float32)
    if real < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - real,) + batch.shape[1:], batch.dtype)])
    yield batch, mask, real


class DataPositionError(errors.UserError, ValueError):
  """A checkpoint's data position does not match the dataset this run reads."""


class TrainIterator:
  """Training batches `start_step, ..., end_step - 1` of a dataset, read ahead.

  Args:
    dataset: an `ImageDataset`.
    batch_size: the GLOBAL batch size.
    start_step: the step of the first batch (the restored step on resume).
    end_step: one past the last step to read.
    shard: this process's index; it reads rows [shard b, (shard+1) b) of each
      global batch, b = batch_size / num_shards.
    num_shards: the number of processes.
    put: places a host batch on the devices (e.g. `Parallelism.put_batch`);
      runs on the reading thread(s), so the transfer overlaps the running step.
    prefetch: batches kept ready ahead of use (>= 1).
    num_workers: threads reading batches (>= 1). With N > 1 they read the
      next N steps at once, each its own step, and the batches still come out
      in step order: the same batches, bit for bit, as with one. Worth it for
      sources whose reads release the GIL (file reads, image decoding) and
      cannot otherwise keep up with the step; up to prefetch + N + 1 batches
      are then in memory.
  """

  def __init__(self, dataset: Any, batch_size: int, *, start_step: int, end_step: int,
               shard: int = 0, num_shards: int = 1, put: Callable[[np.ndarray], Any] | None = None,
               prefetch: int = DEFAULT_PREFETCH, num_workers: int = 1):
    if prefetch < 1:
      raise ValueError(f"prefetch must be >= 1, got {prefetch}.")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
      raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}.")
    self._dataset = dataset
    self._batch_size = batch_size
    self._shard, self._num_shards = shard, num_shards
    self._put = put or (lambda batch: batch)
    self._next_step = start_step  # Of the batch the next __next__ returns.
    self._end_step = end_step
    self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
    self._stop = threading.Event()
    self._num_workers = num_workers
    fill = self._fill if num_workers == 1 else self._fill_parallel
    self._thread = threading.Thread(target=fill, args=(start_step,), daemon=True,
                                    name="gmvq-input")
    self._thread.start()

  @property
  def next_step(self) -> int:
    """The step whose batch `__next__` returns next."""
    return self._next_step

  def position(self) -> dict:
    """Where the pipeline continues: JSON-able, saved in each checkpoint."""
    return position(self._dataset, self._next_step, self._batch_size)

  def _read(self, step: int) -> Any:
    batch = self._dataset.train_batch(step, self._batch_size, shard=self._shard,
                                      num_shards=self._num_shards)
    return self._put(batch)

  def _offer(self, item: tuple[int, Any]) -> None:
    """Queues `item` once there is room, unless close() is called first."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=_POLL_SECONDS)
        return
      except queue.Full:
        continue

  def _fill(self, step: int) -> None:
    try:
      while step < self._end_step and not self._stop.is_set():
        self._offer((step, self._read(step)))
        step += 1
    except BaseException as error:  # Re-raised in the consumer, with its traceback.
      self._queue.put((None, error))

  def _fill_parallel(self, step: int) -> None:
    """As _fill, with the next num_workers steps read at once by a thread pool."""
    pool = concurrent.futures.ThreadPoolExecutor(self._num_workers,
                                                 thread_name_prefix="gmvq-input-worker")
    reading = collections.deque()  # (step, future) in step order.

    def submit():
      nonlocal step
      while step < self._end_step and len(reading) < self._num_workers:
        reading.append((step, pool.submit(self._read, step)))
        step += 1

    try:
      submit()
      while reading and not self._stop.is_set():
        done_step, future = reading.popleft()
        item = (done_step, future.result())  # In step order, whichever read finishes first.
        submit()  # N reads stay in flight while this batch waits for room in the queue.
        self._offer(item)
    except BaseException as error:  # Re-raised in the consumer, with its traceback.
      self._queue.put((None, error))
    finally:
      pool.shutdown(wait=True, cancel_futures=True)

  def __iter__(self) -> "TrainIterator":
    return self

  def __next__(self) -> Any:
    if self._next_step >= self._end_step:
      raise StopIteration
    step, item = self._queue.get()
    if step is None:
      self.close()
      raise item
    assert step == self._next_step, (step, self._next_step)
    self._next_step += 1
    return item

  def close(self) -> None:
    """Stops the reading thread (pending batches are dropped)."""
    self._stop.set()
    self._thread.join()


def position(dataset: Any, step: int, batch_size: int) -> dict:
  """The data position of training step `step`: what a checkpoint at `step` records.

  Returns:
    dict(step, batch_size, seed, dataset position fields): `examples_seen`,
    and for finite datasets the `epoch` and `index_in_epoch` of the next
    example (see the datasets' `position`).
  """
  where = dict(dataset.position(step, batch_size))
  return dict(step=int(step), batch_size=int(batch_size), seed=int(getattr(dataset, "seed", 0)),
              num_train_examples=getattr(dataset, "num_train_examples", None), **where)


def check_position(saved: dict | None, dataset: Any, step: int, batch_size: int) -> dict:
  """Checks a checkpoint's data position against this run's dataset; returns it.

  Raises:
    DataPositionError: naming the fields that differ (e.g. the training
      split changed size, so the shuffle order would not continue).
  """
  expected = position(dataset, step, batch_size)
  if saved is None:  # Checkpoints from before positions were saved.
    return expected
  mismatched = {k: (saved.get(k), v) for k, v in expected.items() if saved.get(k) != v}
  if mismatched:
    details = ", ".join(f"{k}: checkpoint {old!r}, this run {new!r}"
                        for k, (old, new) in mismatched.items())
    raise DataPositionError(
        f"The checkpoint at step {step} was reading a different input stream ({details}), so"
        " the resumed run would not continue with the next batch. Restore the dataset the"
        " run was started with (same data_dir, seed and batch_size), or train in a new"
        " --workdir.")
  return expected
