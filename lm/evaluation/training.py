"""Evaluation tasks during training: `train.eval_tasks = [...]` -> `eval/<task>/<metric>`."""
from typing import Sequence

from lm.api import LoadedModel
from lm.errors import UserError
from lm.evaluation.runner import evaluate
from lm.tokenizers import load_tokenizer

# The last run's model without params: (model_dir, config, mesh), LoadedModel. Its jitted
# functions (and the scorers' jit caches, keyed by its module) are traced and compiled at the
# run's first eval only; later evals of the run pass new params of the same shapes.
_cached: tuple[tuple, LoadedModel] | None = None


def task_scalars(model_dir: str, model_cfg, params, mesh, tasks: Sequence[str], *,
                 data_dir: str | None = None, limit: int | None = None,
                 num_fewshot: int = 0) -> dict[str, float]:
  """Runs `tasks` on the training params (on the training mesh, with the run's tokenizer)
  and returns {"eval/<task>/<metric>": value} for metrics.jsonl and TensorBoard."""
  global _cached
  key = (model_dir, model_cfg, mesh)
  if _cached is None or _cached[0] != key:
    _cached = key, LoadedModel(config=model_cfg, params=None, tokenizer=load_tokenizer(model_dir),
                               mesh=mesh)
  model = _cached[1]
  model.params = params
  try:
    report = evaluate(model, list(tasks), num_fewshot=num_fewshot, limit=limit,
                      data_dir=data_dir)
  finally:
    model.params = None  # the cache keeps no training state alive between evals
  return {f"eval/{task}/{metric}": float(value)
          for task, values in report["results"].items() for metric, value in values.items()}


class _ModelNeeded(Exception):
  """Raised by _NoModel when a task first uses the model: its files have been read."""


class _NoModel:
  """Stands in for the model while check_tasks runs a task up to its first use of it."""

  def __getattr__(self, name):
    raise _ModelNeeded(name)


def check_tasks(tasks: Sequence[str], *, data_dir: str | None = None, limit: int | None = None,
                num_fewshot: int = 0):
  """Raises the UserError that task_scalars would raise at the first eval, before training:
  an unknown task name, a missing or malformed benchmark file (under data_dir) or ppl: file.

  Each task runs through lm.evaluation's own path (`evaluate`, the same arguments) up to its
  first use of the model, so it reads and parses its files as it will at the eval.
  """
  if isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks):
    raise UserError(f"train.eval_tasks must be a list of task names, got {tasks!r}")
  for task in tasks:
    try:
      evaluate(_NoModel(), [task], num_fewshot=num_fewshot, limit=limit, data_dir=data_dir)
    except _ModelNeeded:
      pass
