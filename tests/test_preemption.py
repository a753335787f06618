"""Preemption: SIGTERM / SIGINT checkpoint and exit 0; kill -9 during a save loses nothing saved.

Each test runs `python -m launch.train` as a subprocess, as a cluster would.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

from absl.testing import absltest
from absl.testing import parameterized
import jax

from gmvq_jax import checkpointing
from gmvq_jax import metric_writers
from gmvq_jax import train_lib
import launch_utils

# Seconds a stopped run may take to checkpoint and exit after the signal.
EXIT_BOUND_S = 60
START_BOUND_S = 240


def _wait_for(predicate, timeout, process):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if process.poll() is not None:
      return False
    time.sleep(0.2)
  return False


def _train_records(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [r for r in metric_writers.read_metrics(workdir) if r["split"] == "train"]


def _restore(workdir, step=None):
  config = checkpointing.restore_config(workdir, step)
  manager = checkpointing.make_manager(workdir, read_only=True)
  step = manager.latest_step() if step is None else step
  shapes = type("Shape", (), {"image_shape": (config.image_size, config.image_size, 3)})
  target = jax.eval_shape(lambda: train_lib.create_train_state_shapes(config, shapes))
  state = checkpointing.restore_state(manager, target, step)
  position = checkpointing.restore_data_position(manager, step)
  manager.close()
  return state, position


class SignalTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = os.path.join(tempfile.mkdtemp(), "run")
    self.addCleanup(shutil.rmtree, os.path.dirname(self.workdir), ignore_errors=True)

  @parameterized.parameters(signal.SIGTERM, signal.SIGINT)
  def test_signal_checkpoints_and_exits_zero(self, signum):
    process = launch_utils.start([*launch_utils.TINY_FLAGS, "--config.num_steps=100000",
                                  "--config.checkpoint_every_steps=100000",
                                  f"--workdir={self.workdir}"])
    self.addCleanup(process.kill)
    started = _wait_for(lambda: len(_train_records(self.workdir)) >= 2, START_BOUND_S, process)
    self.assertTrue(started, process.stdout.read() if process.poll() is not None else "timeout")
    sent = time.monotonic()
    process.send_signal(signum)
    output, _ = process.communicate(timeout=EXIT_BOUND_S)
    self.assertLess(time.monotonic() - sent, EXIT_BOUND_S)
    self.assertEqual(process.returncode, 0, output)
    name = signal.Signals(signum).name
    self.assertIn(f"({name}); the checkpoint is saved in", output)
    self.assertIn("Rerun the same command to resume", output)
    self.assertNotIn("Traceback", output)
    manager = checkpointing.make_manager(self.workdir, read_only=True)
    step = manager.latest_step()
    manager.close()
    self.assertIsNotNone(step)
    self.assertGreaterEqual(step, 2)
    self.assertLess(step, 100000)
    state, position = _restore(self.workdir)
    self.assertEqual(int(state.step), step)
    self.assertEqual(position["step"], step)
    self.assertEqual(max(r["step"] for r in _train_records(self.workdir)), step)


_BLOCKING_SAVE = textwrap.dedent('''
    """launch.train whose save of step {step} stalls after writing, before its rename."""
    import asyncio, sys
    from absl import app
    from orbax.checkpoint._src.path import atomicity
    from launch import train

    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
      if self._final_path.name == "{step}":
        with open({marker!r}, "w") as f:
          f.write(str(self.get()))
        await asyncio.sleep(3600)
      return await original(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    app.run(train.main)
''')


class KillDuringSaveTest(absltest.TestCase):

  def test_kill_9_in_the_middle_of_a_save_keeps_the_previous_checkpoint(self):
    root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, root, ignore_errors=True)
    workdir, marker = os.path.join(root, "run"), os.path.join(root, "saving")
    script = os.path.join(root, "blocking_train.py")
    with open(script, "w") as f:
      f.write(_BLOCKING_SAVE.format(step=4, marker=marker))
    args = [*launch_utils.TINY_FLAGS, "--config.num_steps=6",
            "--config.checkpoint_every_steps=2", f"--workdir={workdir}"]
    process = subprocess.Popen([sys.executable, script, *args], cwd=launch_utils.REPO,
                               env=launch_utils.child_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    self.addCleanup(process.kill)
    saving = _wait_for(lambda: os.path.exists(marker), START_BOUND_S, process)
    self.assertTrue(saving, process.stdout.read() if process.poll() is not None else "timeout")
    with open(marker) as f:
      tmp_dir = f.read()
    self.assertTrue(os.listdir(tmp_dir))  # Step 4's files are written, not yet renamed.
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=EXIT_BOUND_S)
    self.assertEqual(process.returncode, -signal.SIGKILL)

    self.assertTrue(os.path.isdir(tmp_dir))
    manager = checkpointing.make_manager(workdir, read_only=True)
    self.assertEqual(manager.all_steps(), [2])
    manager.close()
    state, position = _restore(workdir)
    self.assertEqual((int(state.step), position["step"]), (2, 2))

    # The same command resumes from step 2, finishes, and clears the debris.
    rerun = launch_utils.start(args)
    output, _ = rerun.communicate(timeout=START_BOUND_S)
    self.assertEqual(rerun.returncode, 0, output)
    self.assertIn("Resumed from step 2", output)
    self.assertFalse(os.path.exists(tmp_dir))
    manager = checkpointing.make_manager(workdir, read_only=True)
    self.assertEqual(manager.latest_step(), 6)
    manager.close()
    self.assertEqual([r["step"] for r in _train_records(workdir)], [1, 2, 3, 4, 5, 6])


if __name__ == "__main__":
  absltest.main()
