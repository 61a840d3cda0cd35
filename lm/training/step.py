"""Train state, loss and the pure train/eval steps (the loop jits them with shardings)."""
import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from lm.training import guards


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossConfig:
  z_loss: float = 0.0  # PaLM's auxiliary log(Z)^2 penalty
  label_smoothing: float = 0.0


def cross_entropy(logits_BLV, targets_BL, weights_BL, cfg: LossConfig = LossConfig()):
  """Weighted token losses summed over the batch: (loss_sum, weight_sum, z_loss_sum, nll_sum).

  loss includes label smoothing and z-loss; nll is the plain cross-entropy (what eval reports).
  Padding has weight 0 and so never counts; divide by weight_sum for the mean.
  """
  logits_BLV = logits_BLV.astype(jnp.float32)
  log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  nll_BL = log_z_BL - target_logit_BL
  loss_BL = nll_BL
  if cfg.label_smoothing:
    smooth_BL = log_z_BL - jnp.mean(logits_BLV, axis=-1)
    loss_BL = (1 - cfg.label_smoothing) * nll_BL + cfg.label_smoothing * smooth_BL
  z_BL = cfg.z_loss * jnp.square(log_z_BL)
  w = weights_BL.astype(jnp.float32)
  return (jnp.sum((loss_BL + z_BL) * w), jnp.sum(w), jnp.sum(z_BL * w),
          jnp.sum(nll_BL * w))


def _forward(model, params, batch, deterministic, rng=None):
  rngs = None if deterministic else {"dropout": rng}
  return model.apply({"params": params}, batch["inputs"], batch.get("positions"),
                     batch.get("segment_ids"), deterministic=deterministic, rngs=rngs)


def token_loss(forward, batch, loss_cfg: LossConfig = LossConfig()):
  """The default objective, token cross-entropy: (loss_sum, (weight_sum, {name: sum}))."""
  loss_sum, weight_sum, z_sum, nll_sum = cross_entropy(forward(batch), batch["targets"],
                                                       batch["weights"], loss_cfg)
  return loss_sum, (weight_sum, {"nll": nll_sum, "z_loss": z_sum})


def train_step(state: TrainState, batch, *, model: nn.Module, tx: optax.GradientTransformation,
               loss_cfg: LossConfig, grad_accum_steps: int = 1, objective=None,
               skip_nonfinite: bool = False):
  """One optimizer update on `batch` (split into `grad_accum_steps` micro-batches).

  objective(forward, batch) -> (loss_sum, (weight_sum, {name: sum})) replaces token_loss
  (e.g. lm.finetuning.preference.PreferenceLoss); forward(batch) gives the logits. Gradients
  and every reported sum are divided by the batch's weight_sum.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  objective = objective or functools.partial(token_loss, loss_cfg=loss_cfg)

  def loss_fn(params, micro, micro_rng):
    forward = functools.partial(_forward, model, params, deterministic=False, rng=micro_rng)
    return objective(forward, micro)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (loss_sum, (weight_sum, sums)), grads = grad_fn(state.params, batch, rng)
  else:
    micro_batches = jax.tree.map(
        lambda x: x.reshape((grad_accum_steps, -1) + x.shape[1:]), batch)

    def accumulate(carry, xs):
      micro, i = xs
      out, grads = grad_fn(state.params, micro, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (out, grads)), None

    shapes = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro_batches),
                            rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    ((loss_sum, (weight_sum, sums)), grads), _ = jax.lax.scan(
        accumulate, zeros, (micro_batches, jnp.arange(grad_accum_steps)))

  denom = jnp.maximum(weight_sum, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)  # mean over all real tokens of the batch
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss_sum / denom, **{k: v / denom for k, v in sums.items()},
             "grad_norm": _global_norm(grads), "tokens": weight_sum}
  # Non-finite loss, gradients or new params: flagged (lm.training.guards); with
  # skip_nonfinite the old params and optimizer state are kept, and the metrics zeroed.
  finite = (jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            & guards.tree_finite(params))
  if skip_nonfinite:
    params, opt_state = guards.select(finite, (params, opt_state),
                                      (state.params, state.opt_state))
  metrics = guards.select(finite, metrics, jax.tree.map(jnp.zeros_like, metrics))
  metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def eval_step(params, batch, *, model: nn.Module, objective=None):
  """(loss_sum, weight_sum, {name: sum}) of `batch`, for averaging over several batches: the
  plain cross-entropy (no metrics), or the objective's loss and metrics (see train_step)."""
  forward = functools.partial(_forward, model, params, deterministic=True)
  if objective is not None:
    loss_sum, (weight_sum, sums) = objective(forward, batch)
    return loss_sum, weight_sum, sums
  _, weight_sum, _, nll_sum = cross_entropy(forward(batch), batch["targets"], batch["weights"])
  return nll_sum, weight_sum, {}
