"""Continued pre-training on mixtures: seqio.Mixtures with rates from gin, evaluated per member.

A mixture reads its member tasks at the given rates (seqio samples each example from member i
with probability rate_i / sum of rates), e.g. domain text with replay of general text. The
training loop evaluates the mixture as a whole (eval/loss) and every member task on its own
(eval/<task>/loss, `member_eval_batches`), so forgetting of the replayed text is visible.
Members are read by the function that reads the mixture's own eval batches, passed in by the
caller (the training loop's batches_fn), so both are read alike under any gin binding.
"""
import dataclasses
from typing import Mapping, Sequence

import gin
import seqio

from lm.errors import UserError


@gin.configurable
def register_mixture(name: str, tasks: Mapping[str, float] | Sequence[tuple[str, float]]) -> str:
  """Registers (or replaces) a seqio.Mixture of registered tasks at the given rates; returns
  `name`, so gin can bind `InputConfig.task = @register_mixture()`.

  tasks: {task: rate} or [(task, rate), ...] (a list lets gin call a task's register function
  in place: `[(@domain/register_files_task(), 0.8), ('tiny_shakespeare_char', 0.2)]`).
  Members must share the vocabulary (the same output features); rates are positive. A member
  None (registered with an unset INIT_FROM's vocabulary) registers nothing and returns None.
  """
  pairs = list(tasks.items()) if isinstance(tasks, Mapping) else [tuple(p) for p in tasks]
  if any(task is None for task, _ in pairs):  # lm-train stops on the missing INIT_FROM itself
    return None
  if not pairs:
    raise UserError(f"mixture {name}: no tasks")
  known = seqio.TaskRegistry.names() | seqio.MixtureRegistry.names()
  for task, rate in pairs:
    if task not in known:
      raise UserError(f"mixture {name}: unknown task {task!r}; registered: "
                      f"{sorted(seqio.TaskRegistry.names())}")
    if not isinstance(rate, (int, float)) or rate <= 0:
      raise UserError(f"mixture {name}: the rate of {task!r} must be a positive number, "
                      f"not {rate!r}")
  if len({task for task, _ in pairs}) != len(pairs):
    raise UserError(f"mixture {name}: a task is listed twice")
  features = [seqio.get_mixture_or_task(task).output_features for task, _ in pairs]
  if any(f != features[0] for f in features[1:]):
    raise UserError(f"mixture {name}: the tasks' output features (vocabularies) differ; "
                    "tokenize every member with the same vocabulary")
  if name in seqio.MixtureRegistry.names():  # gin may build the same config twice
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(task, float(rate)) for task, rate in pairs])
  return name


def member_tasks(task: str) -> list[str]:
  """The leaf tasks of a registered mixture (nested mixtures flattened); [] for a task."""
  if task not in seqio.MixtureRegistry.names():
    return []
  return sorted(t.name for t in seqio.get_mixture_or_task(task).tasks)


def member_eval_batches(input_cfg, eval_steps: int, batches_fn) -> dict[str, list]:
  """{task: its first `eval_steps` validation batches} for every member of the mixture
  `input_cfg.task`, {} when it is not a mixture. batches_fn(cfg, "validation") reads a member
  (cfg: input_cfg with the member's task): the function that reads the mixture's own eval
  batches (e.g. lm.data.inputs.make_batches)."""
  batches = {}
  for task in member_tasks(input_cfg.task):
    try:
      it = batches_fn(dataclasses.replace(input_cfg, task=task), "validation")
    except ValueError as e:  # seqio: the task has no validation split
      raise UserError(f"mixture member {task!r}: no validation split ({e}); every member needs "
                      "one, or set EVAL_STEPS=0") from None
    batches[task] = [b for _, b in zip(range(eval_steps), it)]
  return batches
