"""One training run per MODEL_DIR: an flock on MODEL_DIR/train.lock.

The operating system releases the lock when the process holding it exits, however it exits
(SIGKILL, a crash, a lost host's process), so a dead run never leaves it stuck. The file stays
(empty but for the holder's host and pid); only its lock means anything. Multi-host runs: only
process 0 locks, and every process learns the outcome.
"""
import fcntl
import os
import socket

import jax
import numpy as np
from jax.experimental import multihost_utils

from lm.errors import UserError

LOCK_FILE = "train.lock"


class RunLock:
  """Holds MODEL_DIR's lock until `release` (or the process ends); raises UserError if taken."""

  def __init__(self, model_dir: str):
    self._file = None
    error = None
    if jax.process_index() == 0:
      error = self._acquire(model_dir)
    if jax.process_count() > 1:
      taken = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
      if taken and error is None:
        error = f"{model_dir} is locked by another run (see process 0's message)"
    if error:
      self.release()
      raise UserError(error)

  def _acquire(self, model_dir: str) -> str | None:
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, LOCK_FILE)
    self._file = open(path, "a+")
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or "unknown"
      return (f"another run is training in {model_dir} (holder: {holder}); wait for it or "
              "use another --model_dir")
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
    self._file.flush()
    return None

  def release(self):
    if self._file is not None:
      self._file.close()  # closing the descriptor drops the flock
      self._file = None
