"""Orbax checkpoints: params, optimizer state (with step and RNG) and the data position.

Params are their own item so `lm.load` reads weights without the optimizer state (lm.model_dir
reads and writes that item alone). Orbax writes each step into a temporary directory and
renames it when complete, so a step that a crash left half-written is never listed, let alone
restored (the next start deletes such temporary directories). Orbax wants absolute paths: every
function here takes any path and makes it absolute.

A save that fails (full disk, unwritable directory) raises CheckpointWriteError; the steps
saved before stay complete. `restore_newest` skips steps whose files are unreadable (a
truncated or deleted file), moving them aside.
"""
import contextlib
import os
import shutil
import sys

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from lm.errors import UserError
from lm.training.guards import TrainingHalted


class CheckpointWriteError(TrainingHalted):
  """A checkpoint could not be written; the earlier ones are intact."""


class Checkpointer:
  """Async saves every `every` steps (keeping the last `keep`), restore onto any mesh."""

  def __init__(self, directory: str, every: int, keep: int = 3):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=keep,
                                           enable_async_checkpointing=True, create=True,
                                           cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("params", "train", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
    train = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
    with self._write_errors():
      return self._manager.save(step, force=force, args=ocp.args.Composite(
          params=ocp.args.StandardSave(state.params), train=ocp.args.StandardSave(train),
          data=ocp.args.JsonSave(data_state)))

  @contextlib.contextmanager
  def _write_errors(self):
    """Turns a failure to write a checkpoint (found at this save or the next) into one message."""
    try:
      yield
    except Exception as e:
      self._manager.reload()  # lists the complete steps on disk
      raise CheckpointWriteError(
          f"cannot write a checkpoint to {self.directory}: {_first_line(e)}; the complete "
          f"checkpoints are intact (steps: {list(self._manager.all_steps()) or 'none'})") from e

  def restore(self, step: int, abstract_state):
    """Restores onto the shardings carried by `abstract_state` (jax.ShapeDtypeStructs)."""
    train = {"opt_state": abstract_state.opt_state, "step": abstract_state.step,
             "rng": abstract_state.rng}
    out = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state.params),
        train=ocp.args.StandardRestore(train), data=ocp.args.JsonRestore()))
    state = abstract_state.replace(params=out.params, **out.train)
    return state, out.data

  def restore_newest(self, abstract_state, quarantine: str):
    """(step, state, data) of the newest step that restores; None without checkpoints.

    A step that fails to restore is skipped with a warning when an older one restores, and
    moved into `quarantine` (so the run saves that step again); if none restores, a UserError
    carries the newest step's error (e.g. a model that does not match).
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    errors = []
    for step in steps:
      try:
        state, data = self.restore(step, abstract_state)
      except Exception as e:  # orbax/tensorstore raise plain Exceptions for unreadable files
        errors.append((step, _first_line(e)))
        continue
      for bad, message in errors:
        if jax.process_index() == 0:
          print(f"warning: checkpoint step {bad} in {self.directory} is unreadable ({message}); "
                f"moved to {quarantine}/{bad}, resuming from step {step}", file=sys.stderr)
          os.makedirs(quarantine, exist_ok=True)
          shutil.move(os.path.join(self.directory, str(bad)), os.path.join(quarantine, str(bad)))
      if errors:
        if jax.process_count() > 1:
          multihost_utils.sync_global_devices("lm: unreadable checkpoints moved")
        self._manager.reload()
      return step, state, data
    if errors:
      step, message = errors[0]
      raise UserError(f"cannot restore {os.path.dirname(self.directory)} step {step} into this "
                      f"model: {message}" + (" (no older step restores either)"
                                             if len(errors) > 1 else ""))
    return None

  def wait(self):
    with self._write_errors():
      self._manager.wait_until_finished()

  def close(self):
    self._manager.close()


def _first_line(e: Exception) -> str:
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
