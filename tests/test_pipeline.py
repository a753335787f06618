"""The training input pipeline: TrainIterator order, sharding, placement, errors, positions."""

import os
import tempfile
import threading
import time

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from gmvq_jax import data
from gmvq_jax.data import pipeline
import tiny_configs


class _Failing(tiny_configs.RandomImages):

  def train_batch(self, step, batch_size, **shards):
    if step == 2:
      raise OSError("disk gone")
    return super().train_batch(step, batch_size, **shards)


class _Jittery(tiny_configs.RandomImages):
  """Reads that take longer for earlier steps, so parallel reads finish out of step order."""

  def __init__(self):
    super().__init__()
    self.threads = set()

  def train_batch(self, step, batch_size, **shards):
    self.threads.add(threading.current_thread().name)
    time.sleep(0.02 * (3 - step % 4))
    return super().train_batch(step, batch_size, **shards)


def _dataset(source, directory):
  """A small dataset of `source`; npz and folder train on 30 images, so batches span epochs."""
  if source == "embedded":
    return data.make_dataset("embedded", image_size=16, seed=7, num_eval_examples=8)
  images = np.random.default_rng(0).integers(0, 256, (34, 16, 16, 3), dtype=np.uint8)
  train, test = images[:30], images[30:]
  if source == "npz":
    path = os.path.join(directory, "images.npz")
    np.savez(path, train=train, val=test, test=test)
  else:
    path = directory
    for split, split_images in (("train", train), ("test", test), ("val", test)):
      os.makedirs(os.path.join(path, split))
      for i, image in enumerate(split_images):
        Image.fromarray(image).save(os.path.join(path, split, f"{i:03d}.png"))
  return data.make_dataset(source, data_dir=path, image_size=16, seed=7)


class TrainIteratorTest(parameterized.TestCase):

  def test_yields_the_steps_batches_in_order_then_stops(self):
    dataset = data.make_dataset("embedded", image_size=16, seed=3, num_eval_examples=8)
    batches = pipeline.TrainIterator(dataset, 8, start_step=5, end_step=9, prefetch=2)
    got = list(batches)
    self.assertLen(got, 4)
    for step, batch in zip(range(5, 9), got):
      np.testing.assert_array_equal(batch, dataset.train_batch(step, 8))
    self.assertEqual(batches.next_step, 9)
    self.assertEqual(batches.position()["examples_seen"], 9 * 8)
    batches.close()

  def test_each_shard_reads_its_rows_and_put_runs_on_them(self):
    dataset = tiny_configs.RandomImages()
    placed = []
    shards = [pipeline.TrainIterator(dataset, 8, start_step=0, end_step=2, shard=i,
                                     num_shards=2, put=lambda b: placed.append(b.shape) or b)
              for i in range(2)]
    for step in range(2):
      rows = np.concatenate([next(s) for s in shards])
      np.testing.assert_array_equal(rows, dataset.train_batch(step, 8))
    self.assertEqual(set(placed), {(4, 16, 16, 3)})
    for s in shards:
      s.close()

  def test_a_reading_error_reaches_the_training_loop(self):
    batches = pipeline.TrainIterator(_Failing(), 8, start_step=0, end_step=5)
    next(batches), next(batches)
    with self.assertRaisesRegex(OSError, "disk gone"):
      next(batches)

  def test_close_stops_a_reader_blocked_on_a_full_queue(self):
    batches = pipeline.TrainIterator(tiny_configs.RandomImages(), 8, start_step=0,
                                     end_step=10**6, prefetch=1)
    next(batches)
    batches.close()  # Returns: the thread sees the stop event while waiting.
    self.assertFalse(batches._thread.is_alive())

  @parameterized.product(source=("embedded", "npz", "folder"), num_workers=(2, 4))
  def test_workers_give_the_same_batches_in_the_same_order_as_one_reader(self, source, num_workers):
    directory = tempfile.TemporaryDirectory()
    self.addCleanup(directory.cleanup)
    dataset = _dataset(source, directory.name)
    one = list(pipeline.TrainIterator(dataset, 8, start_step=3, end_step=13))
    many = pipeline.TrainIterator(dataset, 8, start_step=3, end_step=13, num_workers=num_workers)
    got = list(many)
    self.assertLen(got, 10)
    for a, b in zip(one, got):
      np.testing.assert_array_equal(a, b)
    self.assertEqual(many.next_step, 13)
    many.close()

  def test_workers_read_in_parallel_and_keep_step_order(self):
    dataset = _Jittery()
    batches = pipeline.TrainIterator(dataset, 8, start_step=0, end_step=9, num_workers=4,
                                     shard=1, num_shards=2)
    for step in range(9):
      want = dataset.train_batch(step, 8, shard=1, num_shards=2)
      np.testing.assert_array_equal(next(batches), want)
    batches.close()
    self.assertGreater(len({n for n in dataset.threads if "worker" in n}), 1)

  def test_a_reading_error_reaches_the_training_loop_after_the_batches_before_it(self):
    batches = pipeline.TrainIterator(_Failing(), 8, start_step=0, end_step=50, num_workers=3)
    for step in range(2):
      np.testing.assert_array_equal(next(batches), _Failing().train_batch(step, 8))
    with self.assertRaisesRegex(OSError, "disk gone"):
      next(batches)
    self.assertFalse(batches._thread.is_alive())

  def test_close_stops_workers_blocked_on_a_full_queue(self):
    batches = pipeline.TrainIterator(tiny_configs.RandomImages(), 8, start_step=0,
                                     end_step=10**6, prefetch=1, num_workers=3)
    next(batches)
    batches.close()
    self.assertFalse(batches._thread.is_alive())

  @parameterized.parameters(0, -1, 1.5, True)
  def test_num_workers_must_be_a_positive_integer(self, num_workers):
    with self.assertRaisesRegex(ValueError, "num_workers"):
      pipeline.TrainIterator(tiny_configs.RandomImages(), 8, start_step=0, end_step=1,
                             num_workers=num_workers)

  def test_position_check_names_what_differs(self):
    dataset = data.make_dataset("embedded", image_size=16, seed=0, num_eval_examples=8)
    saved = pipeline.position(dataset, 4, 8)
    self.assertEqual(pipeline.check_position(saved, dataset, 4, 8), saved)
    self.assertEqual(pipeline.check_position(None, dataset, 4, 8), saved)  # Older checkpoints.
    with self.assertRaisesRegex(pipeline.DataPositionError, "batch_size: checkpoint 8, this run 16"):
      pipeline.check_position(saved, dataset, 4, 16)


if __name__ == "__main__":
  absltest.main()
