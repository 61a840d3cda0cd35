"""Training a pruned model with its masks fixed: pruned weights stay exactly zero.

The mask is the zero pattern of the pruned kernels themselves: the wrapped optimizer sees
zero gradients there and its updates there are zeroed, so AdamW's moments and its decoupled
weight decay (lr * wd * w, zero at w = 0) never move them. Holding no state of its own, the
wrapper keeps the optimizer state and checkpoints as they are, and a resumed run, whose
zeros were restored with the params, keeps the same masks.
"""
import gin
import jax
import jax.numpy as jnp
import optax

from lm.model_dir import pruned_kernels


def keep_zeros(tx: optax.GradientTransformation, paths) -> optax.GradientTransformation:
  """tx whose gradients and updates are zero wherever a param at one of `paths` (tuples of
  keys) is zero."""
  paths = {tuple(p) for p in paths}

  def mask(tree, params):
    def one(path, u, p):
      if tuple(k.key for k in path) not in paths:
        return u
      return jnp.where(p == 0, jnp.zeros_like(u), u)
    return jax.tree_util.tree_map_with_path(one, tree, params)

  def update(updates, state, params=None):
    updates, state = tx.update(mask(updates, params), state, params)
    return mask(updates, params), state

  return optax.GradientTransformation(tx.init, update)


@gin.configurable
def keep_pruned(tx: optax.GradientTransformation, init_from: str | None):
  """tx, wrapped by keep_zeros when `init_from` is an lm-prune directory: an optimizer wrapper
  of lm-train (`train.optimizer_wrappers = [@keep_pruned]`, gin_configs/runs/pretrain.gin)."""
  paths = pruned_kernels(init_from) if init_from else []
  return keep_zeros(tx, paths) if paths else tx
