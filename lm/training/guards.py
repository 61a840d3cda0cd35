"""Non-finite losses and gradients: flagged inside the jitted step, acted on at host sync points.

The train step computes one `finite` flag (loss, gradient norm and the updated params all
finite). Under `train.nonfinite = 'skip'` the step itself keeps the old params and optimizer
state when the flag is down (jnp.where, no host round trip). The loop feeds each step's flag
to `NonFiniteGuard.update` (one small asynchronous jitted call) and calls `check` only where it
already waits for the device (logging, evals, checkpoints), so no step adds a host sync.
"""
import jax
import jax.numpy as jnp


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


@jax.jit
def _update(counts, nonfinite, step, max_skips):
  first_bad, run, tripped_at, skipped = counts
  bad = nonfinite > 0
  run = jnp.where(bad, run + 1, 0)
  return (jnp.where((first_bad == 0) & bad, step, first_bad), run,
          jnp.where((tripped_at == 0) & (run >= max_skips), step, tripped_at),
          skipped + bad.astype(jnp.int32))


class NonFiniteGuard:
  """Counts non-finite steps on the device; `check` raises per the policy.

  policy 'stop': any non-finite step stops the run (naming the first such step). 'skip': the
  step skipped its update; `max_consecutive_skips` in a row stop the run.
  """

  def __init__(self, policy: str, max_consecutive_skips: int):
    self.policy, self.max_skips = policy, max_consecutive_skips
    zero = jnp.zeros((), jnp.int32)
    self._counts = (zero, zero, zero, zero)  # first bad step, current run, step it hit K, skipped

  def update(self, step: int, nonfinite):
    self._counts = _update(self._counts, nonfinite, jnp.int32(step), jnp.int32(self.max_skips))

  def check(self, last_checkpoint: int | None):
    """Raises NonFiniteError if the policy says stop (a host sync: call where one happens)."""
    first_bad, _, tripped_at, _ = (int(x) for x in jax.device_get(self._counts))
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
