"""Workdirs and data_dirs on gs://: training, resuming and evaluating through etils.epath.

gs:// is served by tests/fake_gcs.py from memory, for both clients that reach
a checkpoint: epath (through fsspec, in place of gcsfs) and tensorstore,
which writes Orbax's arrays through its own GCS driver, not through epath,
so no fake epath backend alone could hold a checkpoint; its HTTP endpoint is
redirected to a local fake of the GCS JSON API. Orbax's step listing asks
google-cloud-storage whether the bucket has a hierarchical namespace; that
one call is answered "no" here. The tests run in an empty current directory
and check it stays empty: a path handled with os.path or open() would land
there (as gs:/bkt/...), not in the fake bucket.
"""

import contextlib
import io
import json
import os
import tempfile
import types
from unittest import mock

from absl.testing import absltest
from etils import epath
import numpy as np
from orbax.checkpoint._src.path import gcs_utils
from PIL import Image

from gmvq_jax import evaluation
from gmvq_jax import io as io_lib
from gmvq_jax import metric_writers
from gmvq_jax import token_files
from gmvq_jax import tokenizer
from gmvq_jax import train_lib
from gmvq_jax import workdir_lock
import fake_gcs
import tiny_configs

DATA = "gs://bkt/data/images.npz"


class GcsWorkdirTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.stack = contextlib.ExitStack()
    cls.fs = cls.stack.enter_context(fake_gcs.fake_gcs())
    cls.stack.enter_context(mock.patch.object(
        gcs_utils, "get_bucket",
        lambda name: types.SimpleNamespace(hierarchical_namespace_enabled=False)))
    cls.stack.enter_context(mock.patch.object(workdir_lock, "_SETTLE_S", 0.1))
    cls.cwd = tempfile.mkdtemp()
    cls.stack.callback(os.chdir, os.getcwd())
    os.chdir(cls.cwd)
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, train=rng.integers(0, 256, (40, 16, 16, 3), np.uint8),
             test=rng.integers(0, 256, (12, 16, 16, 3), np.uint8))
    epath.Path(DATA).write_bytes(buffer.getvalue())

  @classmethod
  def tearDownClass(cls):
    cls.stack.close()
    super().tearDownClass()

  def tearDown(self):
    self.assertEqual(os.listdir(self.cwd), [], "something was written to local disk")
    super().tearDown()

  def _names(self, workdir: str) -> set[str]:
    prefix = workdir.removeprefix("gs://") + "/"
    return {key[len(prefix):] for key in self.fs.objects() if key.startswith(prefix)}

  def test_train_resume_and_evaluate_a_gs_workdir(self):
    workdir = "gs://bkt/run"
    config = tiny_configs.tiny_config(dataset="npz", data_dir=DATA, parallelism="jit",
                                      num_steps=3)
    first = train_lib.train_and_evaluate(config, workdir)
    names = self._names(workdir)
    self.assertIn("metrics.jsonl", names)
    self.assertIn("checkpoints/3/state/manifest.ocdbt", names)
    self.assertNotIn(workdir_lock.LOCK_NAME, names)
    self.assertTrue(any(n.startswith("tensorboard/events.out.tfevents") for n in names), names)

    config.num_steps = 4
    train_lib.train_and_evaluate(config, workdir)  # Resumes from step 3.
    names = self._names(workdir)
    self.assertIn("checkpoints/4/state/manifest.ocdbt", names)
    records = metric_writers.read_metrics(workdir)
    keys = [(r["step"], r["split"]) for r in records]
    self.assertLen(set(keys), len(keys))
    self.assertIn((4, "test"), keys)
    self.assertEqual([r["step"] for r in records if r["split"] == "test"], [3, 4])
    self.assertTrue(np.isfinite(first["mse"]))

    figures = evaluation.evaluate_workdir(workdir, num_images=4)
    self.assertEqual(figures["step"], 4)
    objects = self.fs.objects()
    self.assertEqual(json.loads(objects["bkt/run/eval.json"]), json.loads(json.dumps(figures)))
    with Image.open(io.BytesIO(objects["bkt/run/reconstructions.png"])) as image:
      self.assertEqual(image.format, "PNG")
    self.assertFalse(any(".tmp-" in name for name in self._names(workdir)))
    # Up to date: read back without a lock or a write.
    self.assertEqual(evaluation.evaluate_workdir(workdir, num_images=4), figures)

    # Tokens: written to, read from and decoded beside the gs:// workdir.
    tokens_path, _ = tokenizer.tokenize_split(workdir, split="test")
    self.assertEqual(str(tokens_path), "gs://bkt/run/tokens/test.npz")
    output, images = tokenizer.decode_file(workdir, tokens_path, num_images=4)
    names = self._names(workdir)
    self.assertContainsSubset({"tokens/test.npz", "tokens/test.json", "tokens/test_decoded.npz",
                               "tokens/test_decoded.png"}, names)
    with epath.Path(output).open("rb") as f, np.load(f) as decoded:
      np.testing.assert_array_equal(decoded["images"], np.round(images * 255).astype(np.uint8))
    self.assertEqual(images.shape[0], config.num_eval_examples)
    with self.assertRaisesRegex(token_files.OutputExistsError, "--overwrite"):
      tokenizer.decode_file(workdir, tokens_path, num_images=4)
    self.assertFalse(any(".tmp-" in name for name in self._names(workdir)))

  def test_the_lock_refuses_a_second_run_and_is_removed_on_release(self):
    workdir = "gs://bkt/locked"
    with workdir_lock.WorkdirLock(workdir, "training"):
      holder = json.loads(self.fs.objects()["bkt/locked/.lock"])
      self.assertEqual(holder["pid"], os.getpid())
      with self.assertRaisesRegex(workdir_lock.WorkdirBusyError, "in use by another run"):
        workdir_lock.WorkdirLock(workdir, "evaluation").acquire()
    self.assertNotIn("bkt/locked/.lock", self.fs.objects())

  def test_atomic_write_leaves_only_the_destination(self):
    with io_lib.atomic_write("gs://bkt/atomic/out.txt") as tmp, tmp.open("w") as f:
      f.write("done")
    self.assertEqual(self._names("gs://bkt/atomic"), {"out.txt"})
    with self.assertRaises(RuntimeError):
      with io_lib.atomic_write("gs://bkt/atomic/out.txt") as tmp, tmp.open("w") as f:
        f.write("half")
        raise RuntimeError
    self.assertEqual(self.fs.objects()["bkt/atomic/out.txt"], b"done")
    self.assertEqual(self._names("gs://bkt/atomic"), {"out.txt"})

  def test_metrics_append_and_drop_later_steps_on_gs(self):
    workdir = "gs://bkt/metrics"
    writer = metric_writers.MetricWriter(workdir)
    for step in (1, 2, 3):
      writer.write(step, "train", {"loss": float(step)})
    writer.close()
    writer = metric_writers.MetricWriter(workdir, resume_step=2)
    writer.write(3, "train", {"loss": 30.0})
    writer.close()
    self.assertEqual([(r["step"], r["loss"]) for r in metric_writers.read_metrics(workdir)],
                     [(1, 1.0), (2, 2.0), (3, 30.0)])


if __name__ == "__main__":
  absltest.main()
