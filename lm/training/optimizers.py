"""Optax optimizers and learning-rate schedules, built from gin."""
import dataclasses

import gin
import jax
import optax

from lm.errors import UserError


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW (default) or Adafactor with warmup + decay, global-norm clipping, masked decay."""
  name: str = "adamw"  # adamw | adafactor
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  decay: str = "cosine"  # cosine | linear | rsqrt | constant
  end_learning_rate: float = 1e-4  # where cosine/linear decay ends
  decay_steps: int | None = None  # None: the run's total steps
  b1: float = 0.9
  b2: float = 0.99
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip_norm: float | None = 1.0


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup from peak / warmup_steps at step 0 to peak at step warmup_steps, then decay.

  Starting at peak / warmup (not 0) makes the first update count.
  """
  peak, warmup = cfg.learning_rate, cfg.warmup_steps
  decay_steps = max((cfg.decay_steps or total_steps) - warmup, 1)
  if cfg.decay == "cosine":
    alpha = cfg.end_learning_rate / peak if peak else 0.0
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=alpha)
  elif cfg.decay == "linear":
    after = optax.linear_schedule(peak, cfg.end_learning_rate, decay_steps)
  elif cfg.decay == "rsqrt":
    after = lambda step: peak * jax.lax.rsqrt(1.0 + step / max(warmup, 1))
  elif cfg.decay == "constant":
    after = optax.constant_schedule(peak)
  else:
    raise UserError(f"unknown learning-rate decay {cfg.decay!r}")
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(peak / warmup, peak, warmup), after],
                              [warmup])


def decay_mask(params):
  """Weight decay on matrices only: never on norm scales or biases (whatever their rank)."""
  def keep(path, _):
    return getattr(path[-1], "key", None) not in ("scale", "bias")
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  """The configured optimizer; weight decay means the same for both (see _adafactor)."""
  schedule = make_schedule(cfg, total_steps)
  if cfg.name == "adamw":
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=decay_mask)
  elif cfg.name == "adafactor":
    opt = _adafactor(schedule, cfg.weight_decay)
  else:
    raise UserError(f"unknown optimizer {cfg.name!r} (adamw | adafactor)")
  if cfg.clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
  return opt


def _adafactor(schedule: optax.Schedule, weight_decay: float) -> optax.GradientTransformation:
  """optax.adafactor's defaults, with AdamW's decoupled weight decay.

  optax.adafactor adds `weight_decay_rate * param` after the learning-rate scaling, so decay
  would not follow the schedule (0.1 would remove 10 % of every matrix per step). Here the
  decay joins the update before the scheduled rate multiplies it, as in optax.adamw:
  param -= lr_t * (update + weight_decay * param).
  """
  return optax.chain(
      optax.scale_by_factored_rms(),
      optax.clip_by_block_rms(1.0),
      optax.scale_by_param_block_rms(),
      optax.add_decayed_weights(weight_decay, mask=decay_mask),
      optax.scale_by_learning_rate(schedule))
