"""Evaluation: benchmark tasks by name (registry), multiple-choice tasks (scored by
lm.scoring through `LoadedModel.score_choices`), perplexity, and `evaluate` (lm-eval's
engine)."""
from lm.evaluation.registry import TaskResult, get_task, register, task_names
from lm.evaluation.runner import evaluate, format_table
