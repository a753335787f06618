"""Two processes on localhost train in lock-step with one process over the same global batch.

Each process is a real `python -m launch.train` with 2 fake CPU devices,
joined by `jax.distributed.initialize` (coordinator on 127.0.0.1, gloo
collectives); the reference is one process with 4 devices.
"""

import os
import re
import shutil
import signal
import socket
import tempfile
import time

from absl.testing import absltest
import chex
import jax

from gmvq_jax import checkpointing
from gmvq_jax import distributed
from gmvq_jax import metric_writers
from gmvq_jax import train_lib
import launch_utils

BOUND_S = 420  # Each run, start to finish.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _final_state(workdir):
  config = checkpointing.restore_config(workdir)
  manager = checkpointing.make_manager(workdir, read_only=True)
  shapes = type("Shape", (), {"image_shape": (config.image_size, config.image_size, 3)})
  target = jax.eval_shape(lambda: train_lib.create_train_state_shapes(config, shapes))
  state = checkpointing.restore_state(manager, target)
  manager.close()
  return jax.device_get(state.replace(tx=None))


class TwoProcessTest(absltest.TestCase):

  def test_two_processes_match_one_process_with_the_same_global_batch(self):
    root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, root, ignore_errors=True)
    # A large Adam eps keeps the comparison about the gradients: with a small
    # one, float32 summation-order noise in ~0 gradients becomes lr-sized
    # steps (GM-VQ's per-image loss has gradients ~D = 768 times the mean's).
    flags = [*launch_utils.TINY_FLAGS, "--config.num_steps=3", "--config.checkpoint_every_steps=3",
             "--config.parallelism=shard_map", "--config.optimizer.eps=0.5"]
    multi, single = os.path.join(root, "multi"), os.path.join(root, "single")
    address = f"127.0.0.1:{_free_port()}"
    logs = [open(os.path.join(root, f"process{i}.log"), "w+") for i in range(2)]
    processes = [
        launch_utils.start([*flags, f"--workdir={multi}", f"--coordinator_address={address}",
                            "--num_processes=2", f"--process_id={i}"], num_devices=2, log=logs[i])
        for i in range(2)]
    for process in processes:
      self.addCleanup(process.kill)
    for process, log in zip(processes, logs):
      process.wait(timeout=BOUND_S)
      log.seek(0)
      self.assertEqual(process.returncode, 0, log.read()[-5000:])
    logs[0].seek(0)
    first = logs[0].read()
    self.assertIn("Process 0 of 2; 2 local and 4 global devices", first)
    self.assertIn("step 3/3", first)  # The progress line: process 0 only.
    logs[1].seek(0)
    second = logs[1].read()
    self.assertIn("Process 1 of 2", second)
    self.assertNotIn("step 3/3", second)
    reference = launch_utils.start([*flags, f"--workdir={single}"], num_devices=4)
    output, _ = reference.communicate(timeout=BOUND_S)
    self.assertEqual(reference.returncode, 0, output)

    # Process 0 alone wrote the metrics: one record per step, as one process does.
    records = [(r["step"], r["split"]) for r in metric_writers.read_metrics(multi)]
    self.assertEqual(records, [(r["step"], r["split"]) for r in metric_writers.read_metrics(single)])
    state_multi, state_single = _final_state(multi), _final_state(single)
    self.assertEqual(int(state_multi.step), 3)
    # Same global batch and keys; only the all-reduce's summation order differs.
    chex.assert_trees_all_close(state_multi.params, state_single.params, atol=1e-5, rtol=1e-4)
    # Adam's moments hold the gradients themselves (up to ~30 here, per-image
    # loss sums), so their summation-order noise is larger in absolute terms.
    chex.assert_trees_all_close(state_multi.opt_state, state_single.opt_state, atol=1e-4,
                                rtol=1e-4)
    chex.assert_trees_all_close(state_multi.batch_stats, state_single.batch_stats, atol=1e-5,
                                rtol=1e-4)


class TwoProcessPreemptionTest(absltest.TestCase):

  def test_sigterm_to_one_process_stops_both_at_the_same_step(self):
    root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, root, ignore_errors=True)
    workdir = os.path.join(root, "run")
    address = f"127.0.0.1:{_free_port()}"
    logs = [open(os.path.join(root, f"process{i}.log"), "w+") for i in range(2)]
    processes = [
        launch_utils.start([*launch_utils.TINY_FLAGS, "--config.num_steps=100000",
                            "--config.checkpoint_every_steps=100000", f"--workdir={workdir}",
                            f"--coordinator_address={address}", "--num_processes=2",
                            f"--process_id={i}"], num_devices=2, log=logs[i])
        for i in range(2)]
    for process in processes:
      self.addCleanup(process.kill)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline and all(p.poll() is None for p in processes):
      if os.path.exists(metrics) and len(metric_writers.read_metrics(workdir)) >= 2:
        break
      time.sleep(0.2)
    self.assertTrue(all(p.poll() is None for p in processes), "a process ended early")
    processes[1].send_signal(signal.SIGTERM)  # Only the second process is told.
    outputs = []
    for process, log in zip(processes, logs):
      process.wait(timeout=60)
      log.seek(0)
      outputs.append(log.read())
      self.assertEqual(process.returncode, 0, outputs[-1][-5000:])
    stopped = [re.search(r"Stopped at step (\d+) \((\w+)\)", out) for out in outputs]
    self.assertTrue(all(stopped), outputs[0][-3000:])
    steps = {int(match.group(1)) for match in stopped}
    self.assertLen(steps, 1)  # The same step on both processes.
    manager = checkpointing.make_manager(workdir, read_only=True)
    self.assertEqual(manager.latest_step(), steps.pop())
    manager.close()


class FlagTest(absltest.TestCase):

  def test_inconsistent_flags_are_refused_before_contacting_anyone(self):
    with self.assertRaisesRegex(distributed.DistributedSetupError, "need --coordinator_address"):
      distributed.initialize(None, 2, 0)
    with self.assertRaisesRegex(distributed.DistributedSetupError, "HOST:PORT"):
      distributed.initialize("localhost", 2, 0)
    with self.assertRaisesRegex(distributed.DistributedSetupError, "--num_processes=N"):
      distributed.initialize("127.0.0.1:1234", None, 0)
    with self.assertRaisesRegex(distributed.DistributedSetupError, r"must be in \[0, "):
      distributed.initialize("127.0.0.1:1234", 2, 2)
    self.assertFalse(distributed.initialize())  # Single process: nothing to do.


if __name__ == "__main__":
  absltest.main()
