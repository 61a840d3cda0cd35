"""Preference tuning objectives: DPO, cDPO, IPO and SimPO over (prompt, chosen, rejected) pairs.

A pair's log-probability is summed over its response tokens only (the prompt is masked):
pi_c, pi_r for the policy being trained, ref_c, ref_r for the frozen reference (from
lm.finetuning.preference_data, computed with `score`). With h = (pi_c - ref_c) - (pi_r - ref_r):

  dpo    -log sigmoid(beta * h)                                    (Rafailov et al., 2023)
  cdpo   -(1 - e) log sigmoid(beta * h) - e log sigmoid(-beta * h) (e = label_smoothing)
  ipo    (h - 1 / (2 beta))^2                                      (Azar et al., 2023)
  simpo  -log sigmoid(beta * pi_c / |c| - beta * pi_r / |r| - gamma)  (Meng et al., 2024;
         reference-free, |y| = response tokens)

Implicit rewards: beta * (pi - ref) (beta * pi / |y| for SimPO); the reward margin is chosen's
minus rejected's, the reward accuracy the fraction of pairs whose margin is positive.
`sft` is the baseline of plain cross-entropy on the chosen responses (prompt masked), summed
over each response and averaged over pairs.

`PreferenceLoss` is lm-train's objective (`train.objective = @PreferenceLoss()`): it replaces
the token cross-entropy in the train and eval steps; `pair_metrics` computes the same numbers
from `lm.load(...).score`, outside training.
"""
import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import UserError

LOSS_TYPES = ("dpo", "cdpo", "ipo", "simpo", "sft")
METRICS = ("reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward",
           "chosen_logps", "rejected_logps")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PreferenceLoss:
  """The preference objective (see the module docstring); gin-configurable.

  beta: DPO's KL strength (typically 0.1; SimPO uses ~2); label_smoothing: cDPO's assumed
  label-noise rate e in (0, 0.5); gamma: SimPO's target reward margin.
  """
  loss_type: str = "dpo"
  beta: float = 0.1
  label_smoothing: float = 0.0
  gamma: float = 0.5

  def __post_init__(self):
    if self.loss_type not in LOSS_TYPES:
      raise UserError(f"PreferenceLoss.loss_type must be one of {', '.join(LOSS_TYPES)}, not "
                      f"{self.loss_type!r}")
    if self.beta <= 0:
      raise UserError(f"PreferenceLoss.beta must be positive, not {self.beta}")
    if self.loss_type == "cdpo" and not 0 < self.label_smoothing < 0.5:
      raise UserError("cdpo needs PreferenceLoss.label_smoothing in (0, 0.5), not "
                      f"{self.label_smoothing}")
    if self.loss_type != "cdpo" and self.label_smoothing:
      raise UserError(f"PreferenceLoss.label_smoothing applies to cdpo only (loss_type is "
                      f"{self.loss_type!r})")

  @property
  def uses_reference(self) -> bool:
    """Whether the loss needs the reference model's log-probabilities."""
    return self.loss_type not in ("simpo", "sft")

  def pair_losses(self, chosen_logps, rejected_logps, ref_chosen, ref_rejected,
                  chosen_tokens, rejected_tokens):
    """(loss, chosen reward, rejected reward), each [pairs], from summed log-probabilities."""
    beta = self.beta
    if self.loss_type == "simpo":
      chosen = beta * chosen_logps / jnp.maximum(chosen_tokens, 1)
      rejected = beta * rejected_logps / jnp.maximum(rejected_tokens, 1)
      return -jax.nn.log_sigmoid(chosen - rejected - self.gamma), chosen, rejected
    chosen, rejected = beta * (chosen_logps - ref_chosen), beta * (rejected_logps - ref_rejected)
    if self.loss_type == "sft":
      loss = -chosen_logps
    elif self.loss_type == "ipo":
      h = (chosen_logps - ref_chosen) - (rejected_logps - ref_rejected)
      loss = jnp.square(h - 1 / (2 * beta))
    else:
      e = self.label_smoothing
      loss = -(1 - e) * jax.nn.log_sigmoid(chosen - rejected) - e * jax.nn.log_sigmoid(
          rejected - chosen)
    return loss, chosen, rejected

  def __call__(self, forward, batch):
    """lm.training.step's objective: (loss sum, (normalizer, {metric: sum})).

    forward(batch) -> logits; batch holds chosen_/rejected_ inputs, targets and weights
    [pairs, length], reference_chosen / reference_rejected [pairs] and pair_weights [pairs]
    (0 for padding pairs). The normalizer is the number of real pairs (the mean is per pair).
    """
    logps, tokens = response_logps(forward, batch)
    chosen_logps, rejected_logps = jnp.split(logps, 2)
    chosen_tokens, rejected_tokens = jnp.split(tokens, 2)
    loss, chosen, rejected = self.pair_losses(
        chosen_logps, rejected_logps, batch["reference_chosen"], batch["reference_rejected"],
        chosen_tokens, rejected_tokens)
    w = batch["pair_weights"].astype(jnp.float32)
    values = (chosen - rejected, (chosen > rejected).astype(jnp.float32), chosen, rejected,
              chosen_logps, rejected_logps)
    return jnp.sum(loss * w), (jnp.sum(w), {k: jnp.sum(v * w) for k, v in zip(METRICS, values)})


def response_logps(forward, batch):
  """(summed log-probability of each row's weighted targets, weighted token count), [2 * pairs]:
  the chosen rows, then the rejected rows, through one forward pass."""
  rows = {k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])
          for k in ("inputs", "targets", "weights")}
  logits_BLV = forward({"inputs": rows["inputs"]}).astype(jnp.float32)
  target_BL = jnp.take_along_axis(logits_BLV, rows["targets"][..., None], axis=-1)[..., 0]
  logp_BL = target_BL - jax.nn.logsumexp(logits_BLV, axis=-1)
  w_BL = rows["weights"].astype(jnp.float32)
  return jnp.sum(logp_BL * w_BL, axis=-1), jnp.sum(w_BL, axis=-1)


def pair_metrics(loss: PreferenceLoss, policy_logps, reference_logps=None, tokens=None) -> dict:
  """Mean loss and METRICS over pairs, from (chosen, rejected) log-probability arrays.

  policy_logps / reference_logps: (chosen [N], rejected [N]), e.g. from
  lm.finetuning.preference_data.score_pairs; tokens: (chosen [N], rejected [N]) response
  token counts (SimPO's length normalization).
  """
  n = len(policy_logps[0])
  reference_logps = reference_logps or (np.zeros(n), np.zeros(n))
  tokens = tokens or (np.ones(n), np.ones(n))
  args = [np.asarray(x, np.float32) for x in (*policy_logps, *reference_logps, *tokens)]
  pair_loss, chosen, rejected = (np.asarray(x, np.float64) for x in loss.pair_losses(*args))
  values = (pair_loss, chosen - rejected, chosen > rejected, chosen, rejected,
            np.asarray(policy_logps[0]), np.asarray(policy_logps[1]))
  return {k: float(np.mean(v)) for k, v in zip(("loss",) + METRICS, values)}
