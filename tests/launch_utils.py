"""Running the launchers as real subprocesses, as a user's shell would."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny GM-VQ run: the demo's smoke config on 16x16 crops.
TINY_FLAGS = (
    "--config=configs/gmvq_demo.py:smoke",
    "--config.image_size=16",
    "--config.num_eval_examples=8",
    "--config.eval_batch_size=8",
    "--config.log_every_steps=1",
)


def child_env(num_devices: int = 1) -> dict:
  """The environment for a launcher child: CPU with `num_devices` fake devices."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={num_devices}"
                      " --xla_backend_optimization_level=0")
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def start(args, *, num_devices: int = 1, module: str = "launch.train", log=None):
  """Starts `python -m module args...` in the repository root; returns the Popen."""
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO,
                          env=child_env(num_devices), stdout=log or subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
