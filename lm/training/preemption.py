"""SIGTERM / SIGINT during training: finish the step, save a checkpoint there, stop cleanly.

One process: Python handlers note the signal; the loop asks `reached(step)` after every step
(a flag read, no device sync). Several processes (jax.distributed): JAX's preemption service
catches SIGTERM on any process and the coordination service picks the step at which all of
them save (`multihost_utils.reached_preemption_sync_point`, host-side); SIGINT is turned into
a SIGTERM of the same process so that it takes the same path. A second signal aborts at once.
"""
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

from lm.training.guards import TrainingHalted


class Preempted(TrainingHalted):
  """Training stopped on a signal after saving a checkpoint; exit status 128 + signal."""

  def __init__(self, message: str, signum: int):
    super().__init__(message, 128 + signum)


class PreemptionWatch:
  """Context manager: installs the handlers, restores the previous ones on exit."""

  def __init__(self):
    self.signum = None
    self._previous = {}
    self._distributed = jax.process_count() > 1

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self  # Python delivers signals to the main thread only; nothing to watch here
    # JAX's preemption service owns SIGTERM in a multi-process run: leave its handler alone.
    signums = [signal.SIGINT] if self._distributed else [signal.SIGINT, signal.SIGTERM]
    for signum in signums:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
    return False

  def _handle(self, signum, frame):
    if self.signum is not None:  # asked twice: stop now, without a checkpoint
      self.__exit__()
      raise KeyboardInterrupt
    self.signum = signum
    if self._distributed:
      os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step` (every process gets the same answer)."""
    if self._distributed:
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.signum = self.signum or signal.SIGTERM
          return True
        return False
      except RuntimeError:  # jax_enable_preemption_service is off: this process's signals only
        pass
    return self.signum is not None

  def stopped(self, step: int, ckpt_dir: str) -> Preempted:
    """The exception that ends a run stopped (and saved) at `step`."""
    name = signal.Signals(self.signum).name
    return Preempted(f"stopped by {name} at step {step}: checkpoint saved in {ckpt_dir}; run the "
                     "same command to resume", self.signum)
