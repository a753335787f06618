"""One run per workdir: a lock file that a run holds while it writes into its directory.

WORKDIR/.lock is created atomically (O_CREAT | O_EXCL) and holds JSON
{host, pid, started, heartbeat, token}. A second run on the same workdir
fails at once with `WorkdirBusyError` naming the holder, before writing
anything. A lock left by a process that is gone (e.g. after `kill -9`) is
taken over with a one-line warning: on the holder's own host when its pid no
longer exists; from another host (a shared file system) when its heartbeat,
refreshed every HEARTBEAT_S seconds, is older than STALE_AFTER_S.

On a workdir that is not local (gs://..., through etils.epath) there is no
exclusive create: the lock is written if absent, then read back after
_SETTLE_S seconds, and only a run that still finds its own token holds it.
Two runs whose writes land more than _SETTLE_S apart are told apart; two
started within that window of each other may both proceed (best effort).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

from etils import epath

from gmvq_jax import errors
from gmvq_jax import io as io_lib

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
# A lock from another host whose heartbeat is older than this is stale: ten
# missed heartbeats, so a busy but live holder is never taken over.
STALE_AFTER_S = 300.0
# A lock file still empty or half-written after this long was left by a
# process killed while creating it.
_TORN_AFTER_S = 10.0
# Object stores: how long a written lock is left before it is read back.
_SETTLE_S = 2.0


class WorkdirBusyError(errors.UserError):
  """Another live run holds the workdir's lock."""


def lock_path(workdir: epath.PathLike) -> epath.Path:
  return io_lib.as_path(workdir) / LOCK_NAME


def read_holder(workdir: epath.PathLike) -> dict[str, Any] | None:
  """The lock's JSON record, None when there is no lock, {} when it is unreadable."""
  try:
    holder = json.loads(lock_path(workdir).read_text(encoding="utf-8"))
    return holder if isinstance(holder, dict) else {}
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by another user.
    return True
  return True


def stale_reason(holder: dict[str, Any], lock_mtime: float, now: float | None = None) -> str | None:
  """Why the holder is gone (a phrase), or None while it may still be running."""
  now = time.time() if now is None else now
  if not holder.get("token"):
    return (f"its lock file is unreadable and {now - lock_mtime:.0f}s old"
            if now - lock_mtime > _TORN_AFTER_S else None)
  if holder.get("host") == socket.gethostname():
    pid = holder.get("pid")
    return f"process {pid} no longer exists" if not _pid_alive(int(pid)) else None
  age = now - float(holder.get("heartbeat", 0))
  return (f"its heartbeat is {age:.0f}s old (more than {STALE_AFTER_S:.0f}s)"
          if age > STALE_AFTER_S else None)


def describe(holder: dict[str, Any]) -> str:
  if not holder.get("token"):
    return "an unreadable lock"
  started = datetime.datetime.fromtimestamp(float(holder["started"])).isoformat(" ", "seconds")
  return f"pid {holder['pid']} on host {holder['host']}, started {started}"


def locked(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Decorates `fn(workdir, ...)` to run holding the lock of an existing `workdir`."""

  def decorate(fn):
    @functools.wraps(fn)
    def wrapper(workdir, *args, **kwargs):
      with WorkdirLock(workdir, command, create=False):
        return fn(workdir, *args, **kwargs)
    return wrapper

  return decorate


class WorkdirLock:
  """Context manager holding WORKDIR/.lock; `enabled=False` (non-primary processes) does nothing.

  Args:
    workdir: the run's directory; created if absent (only by a holder).
    command: what the run does there, for the busy message (e.g. 'training').
    enabled: False on processes other than 0 of a multi-process run.
    create: False for commands that need an existing workdir: when it is
      not a directory, no lock is taken (the command reports it).
  """

  def __init__(self, workdir: epath.PathLike, command: str = "a run", *, enabled: bool = True,
               create: bool = True):
    workdir = io_lib.as_path(workdir)
    enabled = enabled and (create or workdir.is_dir())
    self.workdir, self.command, self.enabled = workdir, command, enabled
    self.path = lock_path(workdir)
    self._local = io_lib.is_local(workdir)
    self._token = uuid.uuid4().hex
    self._started = time.time()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._created_workdir = False

  def __enter__(self) -> "WorkdirLock":
    if self.enabled:
      with errors.activity(f"locking {self.workdir} for {self.command}"):
        self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    if self.enabled:
      self.release()

  def _record(self) -> bytes:
    return json.dumps(dict(host=socket.gethostname(), pid=os.getpid(), started=self._started,
                           heartbeat=time.time(), token=self._token)).encode()

  def _create(self) -> bool:
    if not self._local:
      return self._create_remote()
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    try:
      os.write(fd, self._record())
    except BaseException:
      os.close(fd)
      os.remove(self.path)
      raise
    os.close(fd)
    return True

  def _create_remote(self) -> bool:
    """Write if absent, then read back: the best an object store offers through epath."""
    if self.path.exists():
      return False
    self.path.write_bytes(self._record())
    time.sleep(_SETTLE_S)
    holder = read_holder(self.workdir)
    return bool(holder) and holder.get("token") == self._token

  def acquire(self) -> None:
    """Creates the lock, taking over a stale one; raises WorkdirBusyError if it is held."""
    self._created_workdir = not self.workdir.exists()
    self.workdir.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # A stale lock may vanish or change between the checks.
      if self._create():
        break
      holder = read_holder(self.workdir)
      if holder is None:
        continue
      try:
        mtime = os.path.getmtime(self.path) if self._local else self.path.stat().mtime
      except FileNotFoundError:
        continue
      reason = stale_reason(holder, mtime)
      if reason is None:
        raise WorkdirBusyError(
            f"{self.workdir} is in use by another run, so {self.command} cannot start"
            f" ({describe(holder)}; lock file {self.path}). Wait for it to finish or stop it,"
            " or use another --workdir; nothing was written. (If that run is surely gone,"
            f" delete {self.path}.)")
      if self._take_over(holder):
        logging.warning("Took over the stale lock of %s: %s held it, but %s.", self.workdir,
                        describe(holder), reason)
        break
    else:
      raise WorkdirBusyError(
          f"Could not lock {self.workdir}: its lock file {self.path} kept changing (another"
          " run starting at the same moment?). Retry, or use another --workdir.")
    self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
    self._thread.start()

  def _take_over(self, stale: dict[str, Any]) -> bool:
    if not self._local:  # No atomic rename: delete the lock judged stale, then create.
      if read_holder(self.workdir) != stale:
        return False
      with contextlib.suppress(FileNotFoundError):
        self.path.unlink()
      return self._create()
    # Rename first, so of two runs taking over at once only one wins the rename;
    # if what was renamed is not the stale lock that was judged, put it back.
    aside = f"{self.path}.stale-{self._token}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return False
    with open(aside, encoding="utf-8", errors="replace") as f:
      renamed = f.read()
    try:
      same = json.loads(renamed).get("token") == stale.get("token")
    except (ValueError, AttributeError):
      same = not stale.get("token")
    if not same:
      try:
        os.link(aside, self.path)
      except FileExistsError:
        pass
      os.remove(aside)
      return False
    os.remove(aside)
    return self._create()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        holder = read_holder(self.workdir)
        if not holder or holder.get("token") != self._token:
          return  # Taken away (deleted by hand); never recreate it behind a user's back.
        if not self._local:  # An object is replaced whole: no temporary needed.
          self.path.write_bytes(self._record())
          continue
        tmp = f"{self.path}.beat-{self._token}"
        with open(tmp, "wb") as f:
          f.write(self._record())
        os.replace(tmp, self.path)
      except OSError:  # A full or read-only disk: the run itself will report it.
        pass

  def release(self) -> None:
    """Stops the heartbeat, removes the lock if it is still this run's, and a workdir left empty."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    holder = read_holder(self.workdir)
    if holder and holder.get("token") == self._token:
      try:
        self.path.unlink()
        if self._created_workdir and self._local and not os.listdir(self.workdir):
          os.rmdir(self.workdir)  # A run that wrote nothing leaves nothing.
      except OSError:
        pass
