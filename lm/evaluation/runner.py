"""`evaluate`: runs registered tasks on a loaded model and gathers one JSON-ready dict."""
import math
import os
import time
from typing import Sequence

from lm.errors import UserError
from lm.evaluation import fewshot
from lm.evaluation.registry import get_task


def evaluate(model, tasks: Sequence[str], *, num_fewshot: int = 0, limit: int | None = None,
             batch_size: int = 16, seed: int = 1234, data_dir: str | None = None,
             seq_len: int | None = None, stride: int | None = None,
             fewshot_sampling: str = "harness", config: dict | None = None) -> dict:
  """Runs `tasks` (registry names, e.g. ["arc_easy", "ppl:/data/val.jsonl"]) on `model` (an
  lm.api.LoadedModel) and returns

    {"results": {task: {metric: value}}, "stderr": {task: {metric: value or None}},
     "num_examples": {task: n}, "seconds": {task: s}, "examples": {task: [rendered, ...]},
     "config": {...the arguments, plus `config`}}

  data_dir: benchmark files (default: $LM_EVAL_DATA_DIR, else ../shared/evaldata's layout
  must be given). limit: the first `limit` documents of each task. seed, fewshot_sampling:
  few-shot draws ("harness": lm-evaluation-harness's, or "per_document"; lm.evaluation.fewshot).
  """
  check_options(tasks, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
                seq_len=seq_len, stride=stride, fewshot_sampling=fewshot_sampling)
  data_dir = data_dir or os.environ.get("LM_EVAL_DATA_DIR") or "."
  fns = {name: get_task(name) for name in tasks}  # unknown names fail before any scoring
  out = {"results": {}, "stderr": {}, "num_examples": {}, "seconds": {}, "examples": {},
         "config": dict(config or {}, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                        batch_size=batch_size, seed=seed, data_dir=data_dir,
                        seq_len=seq_len, stride=stride, fewshot_sampling=fewshot_sampling)}
  for name, fn in fns.items():
    start = time.perf_counter()
    result = fn(model, data_dir=data_dir, num_fewshot=num_fewshot, limit=limit, seed=seed,
                batch_size=batch_size, seq_len=seq_len, stride=stride,
                fewshot_sampling=fewshot_sampling)
    out["seconds"][name] = round(time.perf_counter() - start, 3)
    out["results"][name] = dict(result.metrics)
    out["stderr"][name] = dict(result.stderr)
    out["num_examples"][name] = result.num_examples
    out["examples"][name] = result.examples
  return out


def check_options(tasks: Sequence[str], *, num_fewshot: int = 0, limit: int | None = None,
                  batch_size: int = 16, seq_len: int | None = None, stride: int | None = None,
                  fewshot_sampling: str = "harness"):
  """UserError for an option `evaluate` cannot run with (cheap: lm-eval checks before loading
  the model; the perplexity window's bounds against max_len are checked by the task)."""
  if not tasks:
    raise UserError("no tasks given")
  if limit is not None and limit < 1:
    raise UserError(f"--limit must be >= 1, got {limit}")
  if num_fewshot < 0 or batch_size < 1:
    raise UserError("--num_fewshot must be >= 0 and --batch_size >= 1")
  for name, value in (("seq_len", seq_len), ("stride", stride)):
    if value is not None and value < 1:
      raise UserError(f"--{name} must be >= 1, got {value}")
  if fewshot_sampling not in fewshot.SAMPLERS:
    raise UserError(f"--fewshot_sampling must be one of {', '.join(fewshot.SAMPLERS)}")


def format_table(report: dict) -> str:
  """A plain-text table: task, metric, value, stderr (one row per metric)."""
  rows = [("task", "metric", "value", "stderr")]
  for task, values in report["results"].items():
    for metric, value in values.items():
      err = report["stderr"][task].get(metric)
      rows.append((task, metric, _fmt(value), "N/A" if err is None else _fmt(err)))
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def _fmt(x) -> str:
  if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
    return str(x)
  return f"{x:.4f}" if isinstance(x, float) else str(x)
