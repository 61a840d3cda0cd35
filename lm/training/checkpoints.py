"""Orbax checkpoints: params, optimizer state (with step and RNG) and the data position.

Params are their own item so `lm.load` reads weights without the optimizer state. Orbax
writes each step into a temporary directory and renames it when complete, so a step that a
crash left half-written is never listed, let alone restored. Orbax wants absolute paths: every
function here takes any path and makes it absolute.
"""
import os

import orbax.checkpoint as ocp


class Checkpointer:
  """Async saves every `every` steps (keeping the last `keep`), restore onto any mesh."""

  def __init__(self, directory: str, every: int, keep: int = 3):
    options = ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=keep,
                                           enable_async_checkpointing=True, create=True)
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                          item_names=("params", "train", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
    train = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
    return self._manager.save(step, force=force, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params), train=ocp.args.StandardSave(train),
        data=ocp.args.JsonSave(data_state)))

  def restore(self, step: int, abstract_state):
    """Restores onto the shardings carried by `abstract_state` (jax.ShapeDtypeStructs)."""
    train = {"opt_state": abstract_state.opt_state, "step": abstract_state.step,
             "rng": abstract_state.rng}
    out = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state.params),
        train=ocp.args.StandardRestore(train), data=ocp.args.JsonRestore()))
    state = abstract_state.replace(params=out.params, **out.train)
    return state, out.data

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()


def latest_step(directory: str) -> int | None:
  """The latest complete step in `directory`, None if none (or no directory; nothing is created)."""
  if not os.path.isdir(directory):
    return None
  options = ocp.CheckpointManagerOptions(create=False)
  with ocp.CheckpointManager(os.path.abspath(directory), options=options) as manager:
    return manager.latest_step()


def restore_params(directory: str, step: int | None = None, abstract_params=None):
  """Just the params of a checkpoint (the latest by default), e.g. for inference.

  Raises FileNotFoundError when `directory` holds no complete checkpoint (creating nothing).
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory {directory}")
  options = ocp.CheckpointManagerOptions(create=False)
  with ocp.CheckpointManager(os.path.abspath(directory), options=options,
                             item_names=("params",)) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {directory}")
    args = ocp.args.StandardRestore(abstract_params)
    return manager.restore(step, args=ocp.args.Composite(params=args)).params


def save_params(directory: str, params, step: int = 0):
  """Writes params alone as checkpoint `step` (e.g. imported weights; restore_params reads it)."""
  options = ocp.CheckpointManagerOptions(create=True)
  with ocp.CheckpointManager(os.path.abspath(directory), options=options,
                             item_names=("params",)) as manager:
    manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    manager.wait_until_finished()
