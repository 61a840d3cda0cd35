"""Evaluation: benchmark tasks by name (registry), multiple-choice scoring with a shared
context, perplexity, and `evaluate` (lm-eval's engine)."""
from lm.evaluation.registry import TaskResult, get_task, register, task_names
from lm.evaluation.runner import evaluate, format_table
