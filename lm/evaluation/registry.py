"""Evaluation tasks by name: the registry `lm-eval`, `lm.evaluate` and training-time eval use.

A task is a function registered under a name:

  @register("arc_easy")
  def arc_easy(model, *, data_dir, num_fewshot, limit, seed, batch_size, **options) -> TaskResult

- model: an `lm.api.LoadedModel` (score, score_choices, score_rolling, generate, tokenizer);
- data_dir: the folder holding the benchmark files (e.g. ../shared/evaldata); a task reads
  its files from there and raises lm.errors.UserError when they are missing;
- num_fewshot: examples put before each scored item (drawn reproducibly from `seed`, never the
  scored item; see lm.evaluation.fewshot); limit: evaluate the first `limit` documents (None:
  all); batch_size: scoring batch, in rows; options: task-specific (`seq_len`, `stride` for
  perplexity, `arg` for parametric tasks). Accept **options and ignore what you don't use.

It returns a TaskResult: metrics {name: value}, stderr {name: value or None}, num_examples and
a few rendered examples (prompt, choices/target, gold and the model's answer) for the report.

Parametric tasks: `register("ppl", parametric=True)` serves every name "ppl:<arg>" (e.g.
"ppl:/data/val.jsonl"); the part after the colon reaches the function as options["arg"].

Task modules are imported on first lookup (TASK_MODULES); a module listed there that does
not exist yet is skipped (engineers add theirs independently).
"""
import dataclasses
import importlib
import importlib.util
from typing import Callable

from lm.errors import UserError

TASK_MODULES = ("lm.evaluation.multiple_choice", "lm.evaluation.lambada",
                "lm.evaluation.perplexity", "lm.evaluation.bias", "lm.evaluation.bbq",
                "lm.evaluation.robustness")


@dataclasses.dataclass
class TaskResult:
  """What a task returns: metric values, their standard errors (None where the harness gives
  none), the number of scored documents and a few rendered examples (JSON-serialisable)."""
  metrics: dict[str, float]
  stderr: dict[str, float | None]
  num_examples: int
  examples: list[dict] = dataclasses.field(default_factory=list)


_TASKS: dict[str, Callable[..., TaskResult]] = {}
_PARAMETRIC: dict[str, Callable[..., TaskResult]] = {}
_loaded = False


def register(name: str, parametric: bool = False):
  """Decorator: registers `fn` as task `name` (or as the family "name:<arg>")."""
  def wrap(fn):
    table = _PARAMETRIC if parametric else _TASKS
    if name in table and table[name] is not fn:
      raise ValueError(f"task {name!r} is registered twice")
    table[name] = fn
    return fn
  return wrap


def _load_modules():
  global _loaded
  if _loaded:
    return
  for module in TASK_MODULES:
    if importlib.util.find_spec(module) is not None:
      importlib.import_module(module)
  _loaded = True


def task_names() -> list[str]:
  """Every registered task name (parametric families as 'name:<arg>')."""
  _load_modules()
  return sorted(_TASKS) + sorted(f"{p}:<arg>" for p in _PARAMETRIC)


def get_task(name: str) -> Callable[..., TaskResult]:
  """The task function for `name`; parametric names carry their argument bound as `arg`."""
  _load_modules()
  if name in _TASKS:
    return _TASKS[name]
  family, sep, arg = name.partition(":")
  if sep and family in _PARAMETRIC:
    if not arg:
      raise UserError(f"task {name!r} needs an argument after the colon")
    fn = _PARAMETRIC[family]
    return lambda model, **kwargs: fn(model, arg=arg, **kwargs)
  raise UserError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
