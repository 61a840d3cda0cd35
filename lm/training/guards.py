"""Non-finite losses and gradients: flagged inside the jitted step, acted on at host sync points.

The train step computes one `finite` flag (loss, gradient norm and the updated params all
finite). Under `train.nonfinite = 'skip'` the step itself keeps the old params and optimizer
state when the flag is down (jnp.where, no host round trip). The loop feeds each step's flag
to `NonFiniteGuard.update` inside the same jitted call (lm.training.loop) and calls `check`
only where it already waits for the device (logging, evals, checkpoints).
"""
import jax
import jax.numpy as jnp
import numpy as np


class TrainingHalted(Exception):
  """Training stopped before its last step; `exit_code` is the CLI's exit status.

  (An instance attribute: gin re-raises a proxy that forwards only missing attributes.)
  """

  def __init__(self, message: str, exit_code: int = 1):
    super().__init__(message)
    self.exit_code = exit_code


class NonFiniteError(TrainingHalted):
  """A non-finite loss/gradient (policy 'stop'), or too many consecutive skipped steps."""


def tree_finite(tree) -> jax.Array:
  """True where every element of every leaf is finite."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def select(finite, new, old):
  """`new` where `finite`, else `old`, leaf by leaf (a skipped update)."""
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


class NonFiniteGuard:
  """Counts non-finite steps inside the jitted train step; `check` raises per the policy.

  policy 'stop': any non-finite step stops the run (naming the first such step). 'skip': the
  step skipped its update; `max_consecutive_skips` in a row stop the run. The counts are three
  int32 scalars (first bad step, current run of bad steps, step the run reached the limit)
  carried through the step beside the metric sums (lm.training.loop), so
  counting adds no program of its own to dispatch.
  """

  def __init__(self, policy: str, max_consecutive_skips: int):
    self.policy, self.max_skips = policy, max_consecutive_skips

  @staticmethod
  def zeros():
    """The counts before the first step (host arrays)."""
    return tuple(np.zeros((), np.int32) for _ in range(3))

  def update(self, counts, step, nonfinite):
    """The counts after `step`, whose flag is `nonfinite` (> 0: bad); pure, traceable."""
    first_bad, run, tripped_at = counts
    bad = nonfinite > 0
    run = jnp.where(bad, run + 1, 0)
    return (jnp.where((first_bad == 0) & bad, step, first_bad), run,
            jnp.where((tripped_at == 0) & (run >= self.max_skips), step, tripped_at))

  def check(self, counts, last_checkpoint: int | None):
    """Raises NonFiniteError if the policy says stop (a host sync: call where one happens)."""
    first_bad, _, tripped_at = (int(x) for x in jax.device_get(counts))
    kept = (f"the last checkpoint (step {last_checkpoint}) is kept and nothing newer was "
            f"written" if last_checkpoint else "no checkpoint was written")
    if self.policy == "stop" and first_bad:
      raise NonFiniteError(
          f"non-finite loss or gradients at step {first_bad}; {kept} (lower the learning rate, "
          "check the data, or set train.nonfinite='skip')")
    if self.policy == "skip" and tripped_at:
      raise NonFiniteError(
          f"{self.max_skips} consecutive steps with non-finite loss or gradients were skipped "
          f"(up to step {tripped_at}; train.max_consecutive_skips); {kept}")
