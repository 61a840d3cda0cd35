"""Periodic work of a training run that the loop does not know: `train.hooks = [...]`.

A hook is a callable hook(info: StepInfo) -> {name: float}, run at every eval (each
eval_every-th step and the last) after the run's own evals; what it returns is logged at that
step (metrics.jsonl, TensorBoard). A hook checks its own settings when it is made, so a bad
one fails before the run writes anything. As Levanter's Trainer.add_hook: the loop imports no
hook's code (e.g. lm.evaluation.training.EvalTasks, lm-eval tasks on the training params).
"""
import dataclasses
from typing import Any

from lm.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class StepInfo:
  """What a hook sees: the step just taken, the run's directory, model config and mesh, and
  the model's params (for a LoRA run the merge of base and adapters)."""
  step: int
  model_dir: str
  model_cfg: ModelConfig
  mesh: Any
  params: Any
