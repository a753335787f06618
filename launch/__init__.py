"""The command-line launchers: `python -m launch.<name> --help` for each."""

import os
import signal
import sys


def stopped_while_starting(signum, frame) -> None:
  """SIGTERM handler until a launcher's main runs: nothing has been written yet."""
  del frame
  print(f"Stopped while starting ({signal.Signals(signum).name}); nothing was written.",
        flush=True)
  os._exit(0)  # pylint: disable=protected-access


# `python -m launch.<name>` imports this package first, with sys.argv[0] still
# '-m': from here until the launcher installs its own handlers (while JAX and
# the library import, ~2 s), SIGTERM ends the process with one line, as it
# does later before the first step. Importing the package otherwise (tests, a
# notebook) changes no signal handling.
if sys.argv[:1] == ["-m"]:
  signal.signal(signal.SIGTERM, stopped_while_starting)
