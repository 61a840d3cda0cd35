"""Evaluation tasks during training: `train.eval_tasks = [...]` -> `eval/<task>/<metric>`."""
from typing import Sequence

from lm.api import LoadedModel
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
