"""Faults of a user's environment and input: each ends in one `error:` line and changes nothing.

Every probe runs a launcher as a subprocess, as a user's shell would, and
checks its exit status, that its output ends in one `error:` line with no
traceback, and that the workdir is byte-identical before and after. Disk
faults come from tests/fault_shim (a sitecustomize on the child's
PYTHONPATH that makes writes under one folder raise ENOSPC or EROFS).
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from gmvq_jax import metric_writers
from gmvq_jax import workdir_lock
import launch_utils

SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault_shim")
TIMEOUT_S = 300
NUM_TEST_IMAGES = 3  # Fewer than the 32 that :smoke evaluates.


def _flags(data: str, workdir: str, *extra: str) -> list[str]:
  return ["--config=configs/gmvq_demo.py:smoke", "--config.image_size=16",
          "--config.dataset=npz", f"--config.data_dir={data}", "--config.eval_batch_size=8",
          f"--workdir={workdir}", *extra]


def _env(**faults) -> dict:
  env = launch_utils.child_env()
  if faults:  # root, errno, match, after, bug: see fault_shim/sitecustomize.py.
    env["PYTHONPATH"] = SHIM + os.pathsep + env["PYTHONPATH"]
    env.update({f"GMVQ_FAULT_{k.upper()}": str(v) for k, v in faults.items()})
  return env


def _run(args, module="launch.train", **faults) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *args], cwd=launch_utils.REPO,
                        env=_env(**faults), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True, timeout=TIMEOUT_S, check=False)


def _start(args, log_path, module="launch.train") -> subprocess.Popen:
  with open(log_path, "w") as log:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=launch_utils.REPO,
                            env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True)


def _hashes(directory: str) -> dict[str, str]:
  """{relative path: sha256} of every file under `directory` ({} if it does not exist)."""
  found = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        found[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return found


def _wait_for(predicate, timeout=TIMEOUT_S, process=None) -> bool:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if process is not None and process.poll() is not None:
      return predicate()
    time.sleep(0.1)
  return False


def _read(path: str) -> str:
  with open(path) as f:
    return f.read()


def _event_steps(directory: str) -> list[tuple[str, int]]:
  """(tag, step) of every scalar summary in the TensorBoard event files of `directory`."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  found = []
  for name in sorted(os.listdir(directory)):
    contents, offset = _read_bytes(os.path.join(directory, name)), 0
    while offset < len(contents):
      (length,) = struct.unpack("<Q", contents[offset:offset + 8])
      event = event_pb2.Event.FromString(contents[offset + 12:offset + 12 + length])
      found += [(value.tag, event.step) for value in event.summary.value]
      offset += 16 + length
  return sorted(found)


def _read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


class _Probe(parameterized.TestCase):

  def assertOneErrorLine(self, result, status: int, *fragments: str) -> str:
    """The output ends in one `error:` line holding `fragments`, with no traceback before it."""
    output = result.stdout if hasattr(result, "stdout") else result
    self.assertEqual(result.returncode, status, output[-3000:])
    last = output.strip().splitlines()[-1]
    self.assertTrue(last.startswith("error: "), output[-3000:])
    self.assertEqual(output.count("error: "), 1, output[-3000:])
    self.assertNotIn("Traceback", output)
    for fragment in fragments:
      self.assertIn(fragment, last)
    return last


class TrainedWorkdirTest(_Probe):
  """Probes on copies of one `:smoke` run (3 test images), trained while a second run is refused."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    rng = np.random.default_rng(0)
    cls.data = os.path.join(cls.root, "images.npz")
    np.savez(cls.data, train=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
             test=rng.integers(0, 256, (NUM_TEST_IMAGES, 16, 16, 3), dtype=np.uint8))
    cls.workdir = os.path.join(cls.root, "run")
    first_log = os.path.join(cls.root, "first.log")
    first = _start(_flags(cls.data, cls.workdir), first_log)
    try:
      locked = _wait_for(lambda: os.path.exists(workdir_lock.lock_path(cls.workdir)),
                         process=first)
      cls.second = _run(_flags(cls.data, cls.workdir)) if locked else None
      first.wait(timeout=TIMEOUT_S)
    finally:
      first.kill()
    cls.first_pid, cls.first_status = first.pid, first.returncode
    cls.first_output = _read(first_log)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def _copy(self) -> str:
    workdir = tempfile.mkdtemp(dir=self.root)
    shutil.copytree(self.workdir, workdir, dirs_exist_ok=True)
    return workdir

  def test_a_second_run_on_the_workdir_is_refused_and_the_first_finishes_unharmed(self):
    self.assertIsNotNone(self.second, self.first_output[-3000:])
    self.assertOneErrorLine(self.second, 1, "is in use by another run",
                            f"pid {self.first_pid} on host {socket.gethostname()}", "started ")
    self.assertEqual(self.first_status, 0, self.first_output[-3000:])
    records = metric_writers.read_metrics(self.workdir)
    keys = [(r["step"], r["split"]) for r in records]
    self.assertEqual(keys, [(2, "train"), (4, "train"), (6, "train"), (6, "val"), (6, "test")])
    self.assertFalse(os.path.exists(workdir_lock.lock_path(self.workdir)))
    self.assertEqual(sorted(os.listdir(os.path.join(self.workdir, "checkpoints"))), ["3", "6"])

  def test_a_test_split_smaller_than_num_eval_examples_is_evaluated_whole(self):
    self.assertIn(f"num_eval_examples=32 exceeds the {NUM_TEST_IMAGES} test images",
                  self.first_output)

  def test_rerunning_a_finished_run_writes_nothing(self):
    workdir = self._copy()
    before = _hashes(workdir)
    # Optional fields accept None from the command line.
    result = _run(_flags(self.data, workdir, "--config.num_eval_examples=None"))
    self.assertEqual(result.returncode, 0, result.stdout[-3000:])
    self.assertIn("already finished at step 6", result.stdout)
    self.assertEqual(_hashes(workdir), before)

  def test_num_steps_below_the_checkpoint_says_what_happens_and_writes_nothing(self):
    workdir = self._copy()
    before = _hashes(workdir)
    result = _run(_flags(self.data, workdir, "--config.num_steps=3"))
    self.assertEqual(result.returncode, 0, result.stdout[-3000:])
    self.assertIn("num_steps=3 is below the step of the latest checkpoint", result.stdout)
    self.assertEqual(_hashes(workdir), before)

  @parameterized.parameters(("launch.train", "--config.num_steps=9"), ("launch.evaluate", None))
  def test_read_only_workdir(self, module, extra):
    workdir = self._copy()
    before = _hashes(workdir)
    args = (_flags(self.data, workdir, extra) if module == "launch.train"
            else [f"--workdir={workdir}"])
    result = _run(args, module, root=workdir, errno="EROFS")
    self.assertOneErrorLine(result, 1, workdir, "read-only")
    self.assertEqual(_hashes(workdir), before)

  def test_disk_full_during_a_save_keeps_the_previous_checkpoint(self):
    workdir = self._copy()
    before = _hashes(workdir)
    result = _run(_flags(self.data, workdir, "--config.num_steps=9",
                         "--config.checkpoint_every_steps=1"),
                  root=workdir, errno="ENOSPC", match="orbax-checkpoint-tmp", after=1)
    self.assertOneErrorLine(result, 1, "No space left", "while saving step 7",
                            "a checkpoint needs about 0.", "the checkpoint of step 6 is intact")
    self.assertEqual(_hashes(workdir), before)

  def test_zero_byte_manifest_is_one_line(self):
    workdir = self._copy()
    with open(os.path.join(workdir, "checkpoints", "6", "state", "manifest.ocdbt"), "w"):
      pass
    before = _hashes(workdir)
    result = _run([f"--workdir={workdir}"], "launch.evaluate")
    self.assertOneErrorLine(result, 1, "checkpoints/6 cannot be read")
    self.assertEqual(_hashes(workdir), before)

  def test_truncated_token_file_is_one_line(self):
    workdir = self._copy()
    tokens = os.path.join(workdir, "tokens.npz")
    np.savez(tokens, tokens=np.zeros((2, 4), np.int32), codebook=np.zeros((4, 2), np.float32),
             metadata=np.asarray("{}"))
    with open(tokens, "r+b") as f:
      f.truncate(f.seek(0, 2) // 2)
    before = _hashes(workdir)
    result = _run([f"--workdir={workdir}", f"--tokens={tokens}"], "launch.decode")
    self.assertOneErrorLine(result, 1, tokens, "not a readable token file", "launch.quantize")
    self.assertEqual(_hashes(workdir), before)

  def test_a_stale_lock_after_kill_9_is_taken_over(self):
    workdir = self._copy()
    before = _hashes(workdir)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from gmvq_jax import workdir_lock;"
         " workdir_lock.WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True);"
         " time.sleep(600)", workdir],
        cwd=launch_utils.REPO, env=_env(), stdout=subprocess.PIPE, text=True)
    self.addCleanup(holder.kill)
    self.assertEqual(holder.stdout.readline().strip(), "locked")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    self.assertTrue(os.path.exists(workdir_lock.lock_path(workdir)))
    result = _run(_flags(self.data, workdir))
    self.assertEqual(result.returncode, 0, result.stdout[-3000:])
    notices = [line for line in result.stdout.splitlines() if "Took over the stale lock" in line]
    self.assertLen(notices, 1)
    self.assertIn(f"process {holder.pid} no longer exists", notices[0])
    self.assertEqual(_hashes(workdir), before)  # The stale lock is gone, nothing else changed.


class FreshWorkdirTest(_Probe):
  """Config mistakes and signals before the first step: the workdir is never created."""

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
    self.workdir = os.path.join(self.root, "run")

  @parameterized.named_parameters(
      ("missing_file", ["--config=configs/nope.py"], "no such file configs/nope.py"),
      ("directory", ["--config=configs"], "configs is a directory"),
      ("unknown_field", ["--config=configs/gmvq_demo.py:smoke", "--config.quantizer.bogus=1"],
       "config.quantizer has no field 'bogus'; fields of config.quantizer: "),
      ("typo", ["--config=configs/gmvq_demo.py:smoke", "--config.quantizer.num_code=5"],
       "closest known: config.quantizer.num_codes"),
      ("image_size", ["--config=configs/gmvq_demo.py:smoke", "--config.image_size=4"],
       "config.image_size=4 is invalid"),
  )
  def test_config_mistake(self, args, fragment):
    result = _run([*args, f"--workdir={self.workdir}"])
    self.assertOneErrorLine(result, 1, fragment)
    self.assertFalse(os.path.exists(self.workdir))

  def test_a_bug_keeps_its_traceback_and_ends_in_one_line_saying_what_was_done(self):
    result = _run(["--config=configs/gmvq_demo.py:smoke", f"--workdir={self.workdir}"],
                  bug="gmvq_jax.train_lib:create_train_state")
    self.assertEqual(result.returncode, 1, result.stdout[-3000:])
    self.assertIn("Traceback", result.stdout)
    self.assertEqual(result.stdout.strip().splitlines()[-1],
                     "error: initialising the model failed (RuntimeError: injected bug). This is"
                     " not a fault of your input: please report it with the traceback above.")
    self.assertFalse(os.path.exists(self.workdir))

  def _started(self, log_path):
    process = _start(["--config=configs/gmvq_demo.py:smoke", "--config.image_size=16",
                      f"--workdir={self.workdir}"], log_path)
    self.addCleanup(process.kill)
    locked = _wait_for(lambda: os.path.exists(workdir_lock.lock_path(self.workdir)),
                       process=process)
    self.assertTrue(locked, _read(log_path)[-3000:])
    return process

  def test_sigterm_before_the_first_step(self):
    log_path = os.path.join(self.root, "log")
    process = self._started(log_path)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=TIMEOUT_S)
    output = _read(log_path)
    self.assertEqual(process.returncode, 0, output[-3000:])
    self.assertIn("Stopped before the first step (SIGTERM); nothing was saved",
                  output.strip().splitlines()[-1])
    self.assertNotIn("Traceback", output)
    self.assertFalse(os.path.exists(self.workdir))  # No empty checkpoints/, no lock.

  def test_sigterm_while_the_launcher_imports(self):
    log_path = os.path.join(self.root, "log")
    process = _start(["--config=configs/gmvq_demo.py:smoke", f"--workdir={self.workdir}"],
                     log_path)
    self.addCleanup(process.kill)

    def catches_sigterm():  # The process's caught-signal mask (Linux) has SIGTERM.
      try:
        with open(f"/proc/{process.pid}/status", encoding="utf-8") as f:
          mask = next(line for line in f if line.startswith("SigCgt:")).split()[1]
      except (OSError, StopIteration):
        return False
      return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))

    # The first handler installed is the package's, before JAX is imported.
    self.assertTrue(_wait_for(catches_sigterm, timeout=60, process=process))
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=TIMEOUT_S)
    output = _read(log_path)
    self.assertEqual(process.returncode, 0, output[-3000:])
    # Sent within 0.1 s of the package's handler, seconds before JAX is imported.
    self.assertEqual(output.strip().splitlines()[-1],
                     "Stopped while starting (SIGTERM); nothing was written.")
    self.assertNotIn("Traceback", output)
    self.assertFalse(os.path.exists(self.workdir))

  def test_double_ctrl_c_exits_130_with_one_line(self):
    log_path = os.path.join(self.root, "log")
    process = self._started(log_path)
    process.send_signal(signal.SIGINT)
    # Two signals before the handler runs would count as one: wait for the first.
    self.assertTrue(_wait_for(lambda: "SIGINT received" in _read(log_path), process=process))
    process.send_signal(signal.SIGINT)
    process.wait(timeout=TIMEOUT_S)
    self.assertOneErrorLine(_Result(process.returncode, _read(log_path)), 130,
                            "Interrupted twice (Ctrl-C)")
    self.assertFalse(os.path.exists(self.workdir))


class _Result:

  def __init__(self, returncode, stdout):
    self.returncode, self.stdout = returncode, stdout


class RecordsTest(absltest.TestCase):

  def test_tensorboard_events_after_the_resumed_step_are_dropped(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir)
    writer = metric_writers.MetricWriter(workdir)
    for step in (1, 2, 3, 4, 5):
      writer.write(step, "train", {"loss": float(step)})
    writer.close()
    events = os.path.join(workdir, metric_writers.TENSORBOARD_SUBDIR)
    # Resumed from the checkpoint of step 3: 4 and 5 are written again.
    writer = metric_writers.MetricWriter(workdir, resume_step=3)
    self.assertEqual(_event_steps(events), [("train/loss", s) for s in (1, 2, 3)])
    for step in (4, 5):
      writer.write(step, "train", {"loss": 10.0 * step})
    writer.close()
    self.assertEqual(_event_steps(events), [("train/loss", s) for s in (1, 2, 3, 4, 5)])
    self.assertEqual([(r["step"], r["loss"]) for r in metric_writers.read_metrics(workdir)],
                     [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)])

  def test_a_writer_that_writes_nothing_creates_no_file(self):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    self.addCleanup(shutil.rmtree, os.path.dirname(workdir))
    metric_writers.MetricWriter(workdir).close()
    self.assertFalse(os.path.exists(workdir))


class LockTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)

  def _write_lock(self, **fields):
    holder = dict(host="another-host", pid=1, started=time.time() - 1000,
                  heartbeat=time.time(), token="abc")
    holder.update(fields)
    with open(workdir_lock.lock_path(self.workdir), "w") as f:
      json.dump(holder, f)

  def test_a_live_holder_is_refused_and_its_lock_kept(self):
    with workdir_lock.WorkdirLock(self.workdir, "training"):
      with self.assertRaisesRegex(workdir_lock.WorkdirBusyError,
                                  f"pid {os.getpid()} on host {socket.gethostname()}"):
        workdir_lock.WorkdirLock(self.workdir, "evaluation").acquire()
      self.assertTrue(os.path.exists(workdir_lock.lock_path(self.workdir)))
    self.assertFalse(os.path.exists(workdir_lock.lock_path(self.workdir)))

  def test_another_hosts_lock_is_stale_only_after_the_heartbeat_window(self):
    self._write_lock(heartbeat=time.time() - workdir_lock.STALE_AFTER_S / 2)
    with self.assertRaisesRegex(workdir_lock.WorkdirBusyError, "on host another-host"):
      workdir_lock.WorkdirLock(self.workdir).acquire()
    self._write_lock(heartbeat=time.time() - 2 * workdir_lock.STALE_AFTER_S)
    with self.assertLogs(level="WARNING") as logs:
      with workdir_lock.WorkdirLock(self.workdir):
        self.assertEqual(workdir_lock.read_holder(self.workdir)["pid"], os.getpid())
    self.assertIn("its heartbeat is", logs.output[0])


if __name__ == "__main__":
  absltest.main()
