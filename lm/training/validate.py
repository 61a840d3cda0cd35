"""Checks every numeric training knob before anything runs: one clear UserError per bad value.

Messages name the gin macro a user types (`BATCH_SIZE`, `TRAIN_STEPS`, ...) beside the binding.
"""
import math

from lm.errors import UserError


def _name(macro: str | None, binding: str) -> str:
  return f"{macro} ({binding})" if macro else binding


def _int(value, name: str, minimum: int):
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise UserError(f"{name} must be {what}, got {value!r}")


def _float(value, name: str, low: float = 0.0, high: float | None = None,
           high_inclusive: bool = False):
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        and value >= low and (high is None or value < high or (high_inclusive and value == high)))
  if not ok:
    bound = "" if high is None else f" and {'<=' if high_inclusive else '<'} {high}"
    raise UserError(f"{name} must be a finite number >= {low}{bound}, got {value!r}")


def check_train_config(*, steps, input_cfg, optimizer_cfg, loss_cfg, log_every, eval_every,
                       eval_steps, checkpoint_every, keep_checkpoints, grad_accum_steps,
                       seed, nonfinite, max_consecutive_skips, steps_per_call=1) -> list[str]:
  """Raises a UserError naming the first bad knob of a training run (see lm.training.loop.train).

  Returns warnings to print once training starts: warmup longer than the run is legal (a smoke
  test of a real config) but said; warmup longer than an explicit decay horizon is an error.
  """
  _int(steps, _name("TRAIN_STEPS", "train.steps"), 1)
  _int(getattr(input_cfg, "batch_size", 1), _name("BATCH_SIZE", "batch_size"), 1)
  _int(getattr(input_cfg, "seq_len", 1), _name("SEQ_LEN", "seq_len"), 1)
  _int(log_every, _name("LOG_EVERY", "train.log_every"), 1)
  _int(eval_every, _name("EVAL_EVERY", "train.eval_every") + " (0: only at the end)", 0)
  _int(eval_steps, _name("EVAL_STEPS", "train.eval_steps") + " (0: no evals)", 0)
  _int(checkpoint_every, _name("CHECKPOINT_EVERY", "train.checkpoint_every"), 1)
  _int(keep_checkpoints, "train.keep_checkpoints", 1)
  _int(grad_accum_steps, "train.grad_accum_steps", 1)
  _int(steps_per_call, "train.steps_per_call", 1)
  _int(seed, _name("SEED", "train.seed"), 0)
  if input_cfg.batch_size % grad_accum_steps:
    raise UserError(f"BATCH_SIZE={input_cfg.batch_size} is not divisible by grad_accum_steps="
                    f"{grad_accum_steps}")
  if nonfinite not in ("stop", "skip"):
    raise UserError(f"train.nonfinite must be 'stop' or 'skip', got {nonfinite!r}")
  _int(max_consecutive_skips, "train.max_consecutive_skips", 1)
  _float(loss_cfg.z_loss, "LossConfig.z_loss")
  _float(loss_cfg.label_smoothing, "LossConfig.label_smoothing", 0.0, 1.0)
  return _check_optimizer(optimizer_cfg, steps)


def _check_optimizer(cfg, steps: int) -> list[str]:
  _float(cfg.learning_rate, _name("LEARNING_RATE", "OptimizerConfig.learning_rate"))
  _float(cfg.end_learning_rate, "OptimizerConfig.end_learning_rate")
  _int(cfg.warmup_steps, "OptimizerConfig.warmup_steps", 0)
  if cfg.decay_steps is not None:
    _int(cfg.decay_steps, "OptimizerConfig.decay_steps", 1)
    if cfg.decay in ("cosine", "linear") and cfg.warmup_steps > cfg.decay_steps:
      raise UserError(f"OptimizerConfig.warmup_steps={cfg.warmup_steps} is longer than "
                      f"OptimizerConfig.decay_steps={cfg.decay_steps}")
  _float(cfg.b1, "OptimizerConfig.b1", 0.0, 1.0)
  _float(cfg.b2, "OptimizerConfig.b2", 0.0, 1.0)
  _float(cfg.eps, "OptimizerConfig.eps")
  _float(cfg.weight_decay, "OptimizerConfig.weight_decay")
  if cfg.clip_norm is not None:
    _float(cfg.clip_norm, "OptimizerConfig.clip_norm")
  if cfg.decay_steps is None and cfg.warmup_steps > steps:
    return [f"OptimizerConfig.warmup_steps={cfg.warmup_steps} is longer than TRAIN_STEPS="
            f"{steps}: the learning rate never reaches its peak"]
  return []
