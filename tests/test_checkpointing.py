"""Tests of Orbax checkpointing and resume (gmvq_jax/checkpointing.py, train_lib)."""

import json
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
import chex
import jax
import numpy as np

from gmvq_jax import checkpointing
from gmvq_jax.data import pipeline
from gmvq_jax import train_lib
import tiny_configs


class CheckpointTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)

  def test_round_trip_is_exact(self):
    config = tiny_configs.tiny_config()
    dataset = tiny_configs.RandomImages()
    state = train_lib.create_train_state(config, jax.random.key(0), dataset)
    # Take a step so the optimizer state is non-trivial.
    state, _ = jax.jit(lambda s, x, r: train_lib.train_step(s, x, r, config=config))(
        state, dataset.train_batch(0, 8), jax.random.key(1))
    manager = checkpointing.make_manager(self.workdir)
    checkpointing.save(manager, 1, state, config)
    self.assertEqual(checkpointing.latest_step(manager), 1)
    target = jax.eval_shape(lambda: train_lib.create_train_state_shapes(config, dataset))
    restored = checkpointing.restore_state(manager, target)
    manager.close()
    chex.assert_trees_all_equal(jax.device_get(restored.params), jax.device_get(state.params))
    chex.assert_trees_all_equal(jax.device_get(restored.batch_stats), jax.device_get(state.batch_stats))
    chex.assert_trees_all_equal(jax.device_get(restored.opt_state), jax.device_get(state.opt_state))
    self.assertEqual(int(restored.step), 1)
    chex.assert_trees_all_equal_structs(restored.params, state.params)
    # The config is stored as JSON beside the state and reads back equal.
    self.assertEqual(checkpointing.restore_config(self.workdir).to_dict(),
                     json.loads(json.dumps(config.to_dict())))  # Tuples come back as lists.

  def test_restore_config_without_checkpoint_says_what_to_do(self):
    with self.assertRaisesRegex(FileNotFoundError, "launch.train"):
      checkpointing.restore_config(self.workdir)

  def test_resume_continues_exactly_where_it_stopped(self):
    """A run preempted after step 4 and rerun ends bit-identical to one that never stopped.

    The rerun reads its batches with more input workers, which must not change them.
    """
    config = tiny_configs.tiny_config(num_steps=6, checkpoint_every_steps=2,
                                      parallelism="jit")
    config.dataset = "embedded"
    straight = os.path.join(self.workdir, "straight")
    resumed = os.path.join(self.workdir, "resumed")
    figures_straight = train_lib.train_and_evaluate(config, straight)
    train_lib.train_and_evaluate(config, resumed)
    # Simulate preemption between the checkpoints at steps 4 and 6.
    shutil.rmtree(os.path.join(checkpointing.checkpoint_dir(resumed), "6"))
    manager = checkpointing.make_manager(resumed)
    self.assertEqual(checkpointing.latest_step(manager), 4)
    manager.close()
    rerun = config.copy_and_resolve_references()
    rerun.input_workers = 3
    with mock.patch.object(pipeline, "TrainIterator", wraps=pipeline.TrainIterator) as iterator:
      figures_resumed = train_lib.train_and_evaluate(rerun, resumed)
    self.assertEqual(iterator.call_args.kwargs["num_workers"], 3)
    self.assertEqual(figures_straight, figures_resumed)

    def final_params(workdir):
      manager = checkpointing.make_manager(workdir, read_only=True)
      state = checkpointing.restore_state(manager, jax.eval_shape(
          lambda: train_lib.create_train_state_shapes(config, _Shape())))
      manager.close()
      return jax.device_get(state.params)

    chex.assert_trees_all_equal(final_params(straight), final_params(resumed))


class _Shape:
  image_shape = (16, 16, 3)


if __name__ == "__main__":
  absltest.main()
