"""Evaluation tasks during training: `train.hooks = [@EvalTasks()]` -> `eval/<task>/<metric>`."""
from typing import Sequence

import gin

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


@gin.configurable
class EvalTasks:
  """A training hook (lm/training/hooks.py): runs lm-eval `tasks` (e.g. 'arc_easy',
  'ppl:FILE') at every eval on the training params, logged as eval/<task>/<metric>; data_dir
  and limit as lm-eval's --data_dir and --limit. Made, it has checked the task names and files
  (check_tasks): a bad task fails before the run writes anything, not at its first eval."""

  def __init__(self, tasks: Sequence[str] = (), data_dir: str | None = None,
               limit: int | None = None):
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
      raise UserError(f"EvalTasks.limit must be a positive integer, got {limit!r}")
    check_tasks(tasks, data_dir=data_dir, limit=limit)
    self.tasks, self.data_dir, self.limit = tasks, data_dir, limit

  def __call__(self, info) -> dict[str, float]:
    if not self.tasks:
      return {}
    return task_scalars(info.model_dir, info.model_cfg, info.params, info.mesh, self.tasks,
                        data_dir=self.data_dir, limit=self.limit)


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
    raise UserError(f"EvalTasks.tasks must be a list of task names, got {tasks!r}")
  for task in tasks:
    try:
      evaluate(_NoModel(), [task], num_fewshot=num_fewshot, limit=limit, data_dir=data_dir)
    except _ModelNeeded:
      pass
