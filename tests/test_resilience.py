"""Exact resume, non-finite steps and bad inputs of the training loop (train_and_evaluate)."""

import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import numpy as np

from gmvq_jax import checkpointing
from gmvq_jax import data
from gmvq_jax import faults
from gmvq_jax import metric_writers
from gmvq_jax import train_lib
from gmvq_jax.data import pipeline
from gmvq_jax.quantizers import gq
import tiny_configs


def _config(method, **overrides):
  config = tiny_configs.method_config(method, num_steps=6, checkpoint_every_steps=3,
                                      log_every_steps=1, parallelism="shard_map")
  return tiny_configs.apply_overrides(config, overrides)


def _restore(workdir, config, step=None):
  manager = checkpointing.make_manager(workdir, read_only=True)
  target = jax.eval_shape(lambda: train_lib.create_train_state_shapes(config, _Shape(config)))
  step = manager.latest_step() if step is None else step
  state = checkpointing.restore_state(manager, target, step)
  position = checkpointing.restore_data_position(manager, step)
  manager.close()
  return jax.device_get(state.replace(tx=None)), position


class _Shape:

  def __init__(self, config):
    self.image_shape = (config.image_size, config.image_size, 3)


class _Poisoned:
  """The embedded dataset with one pixel of training batch `bad_step` set to `value`."""

  def __init__(self, base, bad_step, value):
    self._base, self._bad_step, self._value = base, bad_step, value

  def train_batch(self, step, batch_size, **shards):
    batch = self._base.train_batch(step, batch_size, **shards)
    if step == self._bad_step:
      batch = batch.copy()
      batch[0, 0, 0, 0] = self._value
    return batch

  def __getattr__(self, name):
    return getattr(self._base, name)


def _dataset(config):
  return data.make_dataset(config.dataset, image_size=config.image_size, seed=config.seed,
                           num_eval_examples=config.num_eval_examples)


class ExactResumeTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)

  @parameterized.parameters("gmvq", "gq", "vqvae_l2_replace")
  def test_stopping_and_resuming_is_bit_identical(self, method):
    """6 steps straight == 2 + 2 + 2 steps with two stops between checkpoints (at 2 and 4)."""
    config = _config(method)
    straight = os.path.join(self.root, "straight")
    resumed = os.path.join(self.root, "resumed")
    figures_straight = train_lib.train_and_evaluate(config, straight)
    for stop_at in (2, 4):
      with self.assertRaises(train_lib.TrainingStopped) as stopped:
        train_lib.train_and_evaluate(config, resumed, stop_after_steps=2)
      self.assertEqual(stopped.exception.step, stop_at)
      self.assertEqual(stopped.exception.reason, "stop_after_steps")
    figures_resumed = train_lib.train_and_evaluate(config, resumed)
    self.assertEqual(figures_straight, figures_resumed)

    state_a, position_a = _restore(straight, config)
    state_b, position_b = _restore(resumed, config)
    self.assertEqual(int(state_b.step), 6)
    # Parameters, optimizer moments and count, BatchNorm statistics, the
    # quantizer state (TDC multipliers / usage counters) and skip count.
    chex.assert_trees_all_equal(state_a, state_b)
    self.assertEqual(position_a, position_b)
    self.assertEqual(position_b["step"], 6)
    self.assertEqual(position_b["examples_seen"], 6 * config.batch_size)
    if method == "gq":
      self.assertIsInstance(state_b.quantizer_state, gq.TDCState)
      self.assertFalse(np.all(np.asarray(state_b.quantizer_state.lam) == 1.0))
    if method == "vqvae_l2_replace":
      self.assertIsNotNone(state_b.quantizer_state)
    # The stop at step 2 saved a checkpoint the schedule would not have.
    manager = checkpointing.make_manager(resumed, read_only=True)
    self.assertIn(4, manager.all_steps())
    manager.close()
    # One metrics record per (step, split) in both, with equal values
    # (temperature and learning rate included).
    train_a = [r for r in metric_writers.read_metrics(straight) if r["split"] == "train"]
    train_b = [r for r in metric_writers.read_metrics(resumed) if r["split"] == "train"]
    self.assertEqual([r["step"] for r in train_b], list(range(1, 7)))
    self.assertEqual(train_a, train_b)

  def test_position_is_checked_on_resume(self):
    config = _config("gmvq")
    workdir = os.path.join(self.root, "run")
    with self.assertRaises(train_lib.TrainingStopped):
      train_lib.train_and_evaluate(config, workdir, stop_after_steps=2)
    _, position = _restore(workdir, config)
    self.assertEqual(position, pipeline.position(_dataset(config), 2, config.batch_size))
    # The same config over a dataset whose stream differs (another seed).
    other = _dataset(tiny_configs.apply_overrides(config.copy_and_resolve_references(),
                                                  {"seed": 5}))
    before = tiny_configs.snapshot(workdir)
    with self.assertRaisesRegex(pipeline.DataPositionError, "seed: checkpoint 0, this run 5"):
      train_lib.train_and_evaluate(config, workdir, dataset=other)
    self.assertEqual(tiny_configs.snapshot(workdir), before)


class NonFiniteTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = os.path.join(tempfile.mkdtemp(), "run")
    self.addCleanup(shutil.rmtree, os.path.dirname(self.workdir), ignore_errors=True)

  @parameterized.parameters(("gmvq", np.nan), ("gq", np.inf))
  def test_stop_names_the_step_and_terms_and_keeps_the_last_good_checkpoint(self, method, value):
    config = _config(method, checkpoint_every_steps=2)
    poisoned = _Poisoned(_dataset(config), bad_step=3, value=value)  # The 4th step.
    with self.assertRaises(faults.NonFiniteError) as raised:
      train_lib.train_and_evaluate(config, self.workdir, dataset=poisoned)
    message = str(raised.exception)
    self.assertIn("Training step 4 produced non-finite values in: ", message)
    self.assertIn("recon", message)
    self.assertIn("gradients", message)
    self.assertIn("last good checkpoint, step 2", message)
    self.assertIn("nonfinite=skip", message)
    manager = checkpointing.make_manager(self.workdir, read_only=True)
    self.assertEqual(manager.all_steps(), [2])
    manager.close()
    state, _ = _restore(self.workdir, config)
    chex.assert_tree_all_finite(state.params)

  def test_skip_counts_the_step_and_leaves_the_state_unchanged(self):
    config = _config("gmvq", nonfinite="skip", num_steps=4, checkpoint_every_steps=2)
    poisoned = _Poisoned(_dataset(config), bad_step=2, value=np.nan)  # The 3rd step.
    train_lib.train_and_evaluate(config, self.workdir, dataset=poisoned)
    records = {r["step"]: r for r in metric_writers.read_metrics(self.workdir)
               if r["split"] == "train"}
    self.assertEqual([records[s]["skipped_steps"] for s in (1, 2, 3, 4)], [0, 0, 1, 1])
    self.assertTrue(np.isnan(records[3]["loss"]))
    self.assertTrue(np.isfinite(records[4]["loss"]))
    at_2, _ = _restore(self.workdir, config, step=2)
    at_4, _ = _restore(self.workdir, config, step=4)
    self.assertEqual(int(at_4.skipped_steps), 1)
    chex.assert_tree_all_finite(at_4.params)
    # Step 3 changed nothing, step 4 did: params differ from step 2's.
    self.assertFalse(all(jax.tree.leaves(jax.tree.map(np.array_equal, at_2.params, at_4.params))))

  def test_skipped_step_changes_nothing_but_the_step(self):
    config = _config("gmvq")
    dataset = tiny_configs.RandomImages()
    state = train_lib.create_train_state(config, jax.random.key(0), dataset)
    images = dataset.train_batch(0, 8)
    images[1, 2, 3, 0] = np.inf
    new, metrics = jax.jit(lambda s, x: train_lib.train_step(
        s, x, jax.random.key(1), config=config))(state, images)
    self.assertTrue(bool(metrics["nonfinite"]["gradients"]))
    self.assertEqual(int(new.step), 1)
    self.assertEqual(int(new.skipped_steps), 1)
    for name in ("params", "batch_stats", "opt_state"):
      chex.assert_trees_all_equal(getattr(new, name), getattr(state, name))


class BadInputTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
    self.config = _config("gmvq", num_steps=2, checkpoint_every_steps=2,
                          **{"optimizer.warmup_steps": 1})

  def _trained(self):
    workdir = os.path.join(self.root, "run")
    train_lib.train_and_evaluate(self.config, workdir)
    return workdir

  def test_incompatible_config_names_the_fields_and_changes_nothing(self):
    workdir = self._trained()
    before = tiny_configs.snapshot(workdir)
    changed = tiny_configs.apply_overrides(self.config.copy_and_resolve_references(), {
        "quantizer.num_codes": 16, "model.channels": (8, 8), "batch_size": 4,
        "num_steps": 4})  # num_steps may change on resume; the others may not.
    with self.assertRaises(checkpointing.CheckpointError) as raised:
      train_lib.train_and_evaluate(changed, workdir)
    message = str(raised.exception)
    self.assertIn("config.quantizer.num_codes: checkpoint has 32, this run has 16", message)
    self.assertIn("config.model.channels: checkpoint has [8, 16], this run has (8, 8)", message)
    self.assertIn("config.batch_size: checkpoint has 8, this run has 4", message)
    self.assertNotIn("config.num_steps", message)
    self.assertEqual(tiny_configs.snapshot(workdir), before)

  def test_longer_run_resumes_from_a_finished_one(self):
    workdir = self._trained()
    longer = tiny_configs.apply_overrides(self.config.copy_and_resolve_references(),
                                          {"num_steps": 3})
    train_lib.train_and_evaluate(longer, workdir)
    state, position = _restore(workdir, longer)
    self.assertEqual((int(state.step), position["step"]), (3, 3))

  def test_corrupted_checkpoint_gets_a_clear_error_and_changes_nothing(self):
    workdir = self._trained()
    state_dir = os.path.join(checkpointing.checkpoint_dir(workdir), "2", "state")
    damaged = 0
    for root, _, names in os.walk(state_dir):
      for name in names:
        if not name.startswith("_"):  # Array data files; keep Orbax's metadata.
          with open(os.path.join(root, name), "r+b") as f:
            size = f.seek(0, 2)
            f.seek(0)
            f.write(b"\xff" * size)
          damaged += 1
    self.assertGreater(damaged, 0)
    before = tiny_configs.snapshot(workdir)
    with self.assertRaisesRegex(checkpointing.CheckpointError,
                                r"checkpoints/2 cannot be read .*Nothing was changed on disk"):
      train_lib.train_and_evaluate(self.config, workdir)
    self.assertEqual(tiny_configs.snapshot(workdir), before)

  def test_workdir_that_is_a_file(self):
    path = os.path.join(self.root, "file")
    with open(path, "w") as f:
      f.write("keep me")
    with self.assertRaisesRegex(NotADirectoryError, "is a file"):
      train_lib.train_and_evaluate(self.config, path)
    with open(path) as f:
      self.assertEqual(f.read(), "keep me")

  def test_unprepared_dataset(self):
    config = _config("gmvq", dataset="cifar10", image_size=32)
    config.data_dir = os.path.join(self.root, "tfds")
    workdir = os.path.join(self.root, "run")
    with self.assertRaisesRegex(data.DatasetNotPreparedError, "not prepared"):
      train_lib.train_and_evaluate(config, workdir)
    self.assertFalse(os.path.exists(checkpointing.checkpoint_dir(workdir)))


class MetricWriterResumeTest(absltest.TestCase):

  def test_records_after_the_resumed_step_are_dropped(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir)
    writer = metric_writers.MetricWriter(workdir, tensorboard=False)
    for step in (1, 2, 3, 4):
      writer.write(step, "train", {"loss": float(step)})
    writer.close()
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
      f.write('{"step": 5, "spl')  # Torn by a kill.
    writer = metric_writers.MetricWriter(workdir, tensorboard=False, resume_step=2)
    writer.write(3, "train", {"loss": 30.0})
    writer.close()
    self.assertEqual([(r["step"], r["loss"]) for r in metric_writers.read_metrics(workdir)],
                     [(1, 1.0), (2, 2.0), (3, 30.0)])


if __name__ == "__main__":
  absltest.main()
