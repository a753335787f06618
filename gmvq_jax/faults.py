"""Stopping training safely: preemption signals and non-finite steps.

`StopRequests` turns SIGTERM and SIGINT into a request the training loop
sees between steps (it then checkpoints and returns). In a multi-process run
the processes must agree on the step to stop at, so SIGTERM goes to JAX's
preemption service (whose sync point every process reaches at the same step)
and SIGINT is forwarded to it as a SIGTERM.

`nonfinite_flags` marks the loss terms (and gradients) of a step that are
NaN or infinite; the compiled step skips such an update and the loop either
stops, naming them, or counts the skip (config.nonfinite = 'stop' | 'skip').
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from gmvq_jax import checkpointing
from gmvq_jax import errors

NONFINITE_MODES = ("stop", "skip")
GRADIENTS = "gradients"


class NonFiniteError(errors.UserError, FloatingPointError):
  """A training step produced NaN or infinite values and the run stopped."""


class TrainingStopped(Exception):
  """Training stopped early on request (a signal, or `stop_after_steps`).

  Attributes:
    step: the step of the saved checkpoint (None: there is none).
    reason: e.g. 'SIGTERM', 'SIGINT' or 'stop_after_steps'.
    workdir: the run's directory; rerunning with it resumes at `step`.
    saved: whether this run saved the checkpoint of `step` (False when the
      stop came before its first step).
  """

  def __init__(self, step: int | None, reason: str, workdir: str, saved: bool = True):
    if saved:
      message = (f"Stopped at step {step} ({reason}); the checkpoint is saved in"
                 f" {checkpointing.checkpoint_dir(workdir)}. Rerun the same command to resume.")
    else:
      kept = ("no checkpoint exists yet" if step is None
              else f"the checkpoint of step {step} is unchanged")
      message = (f"Stopped before the first step ({reason}); nothing was saved and {kept}."
                 " Rerun the same command to continue.")
    super().__init__(message)
    self.step, self.reason, self.workdir, self.saved = step, reason, workdir, saved


class StopRequests:
  """Catches SIGTERM / SIGINT while training; `requested(step)` says when to stop.

  Use as a context manager around the training loop; previous handlers come
  back on exit. A second SIGINT in a single-process run raises
  errors.StopSignal (a KeyboardInterrupt) at once (no checkpoint), for a
  user who wants out now.
  Handlers can only be installed from the main thread; elsewhere (e.g. a
  notebook's worker thread) signals keep their usual effect.
  """

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict[int, object] = {}
    self._multiprocess = jax.process_count() > 1

  def __enter__(self) -> "StopRequests":
    if threading.current_thread() is not threading.main_thread():
      return self
    if self._multiprocess:
      # SIGTERM stays with JAX's preemption notifier; SIGINT is forwarded to it.
      self._install(signal.SIGINT, self._forward_to_sigterm)
    else:
      self._install(signal.SIGTERM, self._record)
      self._install(signal.SIGINT, self._record)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _install(self, signum: int, handler) -> None:
    self._previous[signum] = signal.signal(signum, handler)

  def _record(self, signum: int, frame) -> None:
    del frame
    if signum == signal.SIGINT and self.signal_name == "SIGINT":
      raise errors.StopSignal(
          "Interrupted twice (Ctrl-C): stopped at once without saving; the last saved"
          " checkpoint is kept. Rerun the same command to resume from it.")
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s received: checkpointing after the current step, then exiting.",
                    self.signal_name)

  def _forward_to_sigterm(self, signum: int, frame) -> None:
    del signum, frame
    self.signal_name = "SIGINT"
    os.kill(os.getpid(), signal.SIGTERM)

  def requested_before_start(self) -> bool:
    """Single-process: whether a signal came while the run was being set up."""
    return not self._multiprocess and self.signal_name is not None

  def requested(self, step: int) -> bool:
    """Whether to checkpoint and stop now, with `step` steps done.

    Multi-process: True on every process at the same step once any of them
    was sent SIGTERM (JAX's preemption sync point; call at every step).
    """
    if self._multiprocess:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
      return False
    return self.signal_name is not None


def nonfinite_flags(terms: Mapping[str, jax.Array], grads) -> dict[str, jax.Array]:
  """Per loss term, and for the gradients as a whole: is any value NaN or infinite?

  Args:
    terms: the step's scalar loss terms (after the cross-device mean, so
      every device computes the same flags).
    grads: the step's (averaged) gradient pytree.

  Returns:
    {name: bool scalar} over the terms' names and `GRADIENTS`.
  """
  flags = {name: ~jnp.all(jnp.isfinite(value)) for name, value in terms.items()}
  flags[GRADIENTS] = ~jnp.all(jnp.stack([jnp.all(jnp.isfinite(g))
                                         for g in jax.tree.leaves(grads)]))
  return flags


def offending(flags: Mapping[str, object]) -> list[str]:
  """The names whose (host) flag is set, loss terms first, gradients last."""
  names = sorted(name for name, flag in flags.items() if bool(flag) and name != GRADIENTS)
  return names + ([GRADIENTS] if bool(flags.get(GRADIENTS, False)) else [])


def apply_if_finite(nonfinite: dict[str, jax.Array], state: Any, **new: Any) -> Any:
  """`state` with the `new` fields and one more step, unless a `nonfinite` flag is set.

  A non-finite step changes nothing but the step count (an exact select, so
  finite steps are bit-identical to an unguarded update) and counts itself
  in `skipped_steps`.
  """
  finite = ~jnp.any(jnp.stack(list(nonfinite.values())))
  keep = lambda fresh, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), fresh, old)
  return state.replace(
      step=state.step + 1,
      skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
      **{field: keep(value, getattr(state, field)) for field, value in new.items()})
