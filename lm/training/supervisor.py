"""What watches a training run from outside the jitted step, in one object for the loop.

The MODEL_DIR lock (run_lock), SIGTERM/SIGINT (preemption) and non-finite steps (guards).
Used as a context manager around the run: leaving it releases the lock and the signal
handlers however the run ends.
"""
import sys

import jax

from lm.training import console
from lm.training.guards import NonFiniteError, NonFiniteGuard
from lm.training.preemption import PreemptionWatch
from lm.training.run_lock import RunLock


class Supervisor:
  """lock(model_dir) once the start is good; start() before the first step; then every step
  preempted(), and check() where the loop syncs with the device anyway. The non-finite counts
  themselves are updated inside the train step (guard.update)."""

  def __init__(self, nonfinite: str = "stop", max_consecutive_skips: int = 10):
    self.guard = NonFiniteGuard(nonfinite, max_consecutive_skips)
    self.watch = PreemptionWatch()
    self._lock = None
    self._closing = []

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.watch.__exit__()
    if self._lock:
      self._lock.release()
    for obj in self._closing:
      obj.close()
    return False

  def closing(self, obj):
    """Closes `obj` (e.g. the progress bar, before a stop message is printed) on exit."""
    self._closing.append(obj)
    return obj

  def lock(self, model_dir: str):
    """Takes MODEL_DIR's lock (UserError if another run holds it)."""
    self._lock = RunLock(model_dir)

  def start(self, warnings=()):
    """Ends the start-up (native logs reach the terminal again: lm.training.console), prints
    start-up warnings and starts watching for SIGTERM/SIGINT."""
    console.show_native_logs()
    if jax.process_index() == 0:
      for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    self.watch.__enter__()

  def check(self, ckpt, counts):
    """Raises NonFiniteError per the guard's `counts`, once the checkpoint in flight (a good
    one) is complete. A host sync: call it where the loop waits for the device anyway."""
    try:
      self.guard.check(counts, None)
    except NonFiniteError:
      ckpt.wait()
      self.guard.check(counts, ckpt.latest_step())

  def preempted(self, step: int) -> bool:
    """Whether a signal asks to save at `step` and stop (the same answer on every process)."""
    return self.watch.reached(step)

  def stopped(self, step: int, ckpt, writer) -> Exception:
    """Once the checkpoint of `step` is complete: the Preempted exception that ends the run."""
    ckpt.wait()
    ckpt.close()
    writer.close()
    return self.watch.stopped(step, ckpt.directory)
