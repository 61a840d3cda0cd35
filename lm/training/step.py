"""Train state, loss and the pure train/eval steps (the loop jits them with shardings)."""
import dataclasses
from typing import Any

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax


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


def train_step(state: TrainState, batch, *, model: nn.Module, tx: optax.GradientTransformation,
               loss_cfg: LossConfig, grad_accum_steps: int = 1):
  """One optimizer update on `batch` (split into `grad_accum_steps` micro-batches)."""
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, micro, micro_rng):
    logits = _forward(model, params, micro, deterministic=False, rng=micro_rng)
    loss_sum, *aux = cross_entropy(logits, micro["targets"], micro["weights"], loss_cfg)
    return loss_sum, tuple(aux)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (loss_sum, (weight_sum, z_sum, nll_sum)), grads = grad_fn(state.params, batch, rng)
  else:
    micro_batches = jax.tree.map(
        lambda x: x.reshape((grad_accum_steps, -1) + x.shape[1:]), batch)

    def accumulate(carry, xs):
      micro, i = xs
      out, grads = grad_fn(state.params, micro, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (out, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, ((0.0, (0.0, 0.0, 0.0)), state.params))
    ((loss_sum, (weight_sum, z_sum, nll_sum)), grads), _ = jax.lax.scan(
        accumulate, zeros, (micro_batches, jnp.arange(grad_accum_steps)))

  denom = jnp.maximum(weight_sum, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)  # mean over all real tokens of the batch
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss_sum / denom, "nll": nll_sum / denom, "z_loss": z_sum / denom,
             "grad_norm": _global_norm(grads), "tokens": weight_sum}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def eval_step(params, batch, *, model: nn.Module):
  """(loss_sum, weight_sum) of `batch`, for averaging over several batches."""
  logits = _forward(model, params, batch, deterministic=True)
  _, weight_sum, _, nll_sum = cross_entropy(logits, batch["targets"], batch["weights"])
  return nll_sum, weight_sum
