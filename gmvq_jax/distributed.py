"""Starting a multi-process (multi-host) run: `jax.distributed.initialize` from flags.

Every process of the run executes the same launcher command; they differ
only in --process_id (or in what the cluster tells each of them). Call
`initialize` before any other JAX call.
"""

from __future__ import annotations

import logging

import jax

from gmvq_jax import errors


class DistributedSetupError(errors.UserError, ValueError):
  """The multi-process flags are inconsistent."""


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto_detect: bool = False,
               timeout_s: int = 300) -> bool:
  """Joins this process to a multi-process JAX run when asked to; else does nothing.

  Args:
    coordinator_address: 'host:port' of process 0, reachable from every
      process. With it, `num_processes` and `process_id` are required.
    num_processes: how many processes the run has.
    process_id: this process's index, 0 .. num_processes - 1.
    auto_detect: with no address, let JAX read the cluster's environment
      (Cloud TPU pod slices, SLURM, Open MPI, ...) for all three.
    timeout_s: how long to wait for every process to join.

  Returns:
    Whether `jax.distributed.initialize` was called.

  Raises:
    DistributedSetupError: inconsistent flags (before contacting anyone).
  """
  if coordinator_address is None:
    if num_processes is not None or process_id is not None:
      raise DistributedSetupError(
          "--num_processes/--process_id need --coordinator_address=HOST:PORT (process 0's"
          " address), or pass --distributed alone to read them from the cluster's environment.")
    if not auto_detect:
      return False
    jax.distributed.initialize(initialization_timeout=timeout_s)
  else:
    if ":" not in coordinator_address:
      raise DistributedSetupError(
          f"--coordinator_address={coordinator_address!r} must be HOST:PORT, e.g. 10.0.0.1:1234.")
    if num_processes is None or process_id is None:
      raise DistributedSetupError(
          "--coordinator_address needs --num_processes=N and --process_id=I (0 <= I < N) too.")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedSetupError(
          f"--process_id={process_id} must be in [0, --num_processes={num_processes}).")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=timeout_s)
  logging.info("Process %d of %d; %d local and %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
