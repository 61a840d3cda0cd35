"""Evaluation tasks during training: `train.eval_tasks = [...]` -> `eval/<task>/<metric>`."""
from typing import Sequence

from lm.api import LoadedModel
from lm.evaluation.runner import evaluate
from lm.tokenizers import load_tokenizer


def task_scalars(model_dir: str, model_cfg, params, mesh, tasks: Sequence[str], *,
                 data_dir: str | None = None, limit: int | None = None,
                 num_fewshot: int = 0) -> dict[str, float]:
  """Runs `tasks` on the training params (on the training mesh, with the run's tokenizer)
  and returns {"eval/<task>/<metric>": value} for metrics.jsonl and TensorBoard."""
  model = LoadedModel(config=model_cfg, params=params, tokenizer=load_tokenizer(model_dir),
                      mesh=mesh)
  report = evaluate(model, list(tasks), num_fewshot=num_fewshot, limit=limit, data_dir=data_dir)
  return {f"eval/{task}/{metric}": float(value)
          for task, values in report["results"].items() for metric, value in values.items()}
