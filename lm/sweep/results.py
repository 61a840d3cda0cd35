"""A sweep's results read back from its run directories alone: status and one row per run.

A run is `done` once its metrics reach the final step and its final checkpoint is complete;
`failed` when its last launch exited with an error (the error line of its output is kept) or
its loss turned non-finite; `incomplete` when its launch was killed or interrupted (a re-run
resumes it); `pending` before its first launch.
"""
import json
import math
import os
import statistics

from lm.jsonl import read_json

RUN_RECORD = "sweep_run.json"  # written by the sweep in each run directory
TRAIN_LOG = "train.log"
LOSS_KEYS = ("train/loss", "eval/loss")
STANDARD_EVAL_KEYS = ("eval/loss", "eval/perplexity")


def read_metrics(run_dir: str) -> list[dict]:
  """metrics.jsonl's records (a line cut short by a crash is skipped)."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
  return records


def checkpoint_step(run_dir: str) -> int | None:
  """The run's latest complete checkpoint step (None: no checkpoint yet)."""
  from lm.model_dir import latest_step  # Orbax: only when a run dir has checkpoints
  ckpt_dir = os.path.join(run_dir, "checkpoints")
  return latest_step(ckpt_dir) if os.path.isdir(ckpt_dir) else None


def run_status(run_dir: str, metrics: list[dict] | None = None) -> dict:
  """{'status', 'step' (last logged), 'steps' (the run's total), 'error'} of one run dir."""
  metrics = read_metrics(run_dir) if metrics is None else metrics
  run = read_json(os.path.join(run_dir, "run.json")) or {}
  record = read_json(os.path.join(run_dir, RUN_RECORD)) or {}
  attempts = record.get("attempts", [])
  steps = run.get("train_steps")
  step = max((m["step"] for m in metrics), default=0)
  out = {"status": "pending", "step": step, "steps": steps, "error": ""}
  bad = next((m for m in metrics for k in LOSS_KEYS
              if k in m and not math.isfinite(m[k])), None)
  if bad is not None:
    return {**out, "status": "failed", "error": f"non-finite loss at step {bad['step']}"}
  if steps and step >= steps and checkpoint_step(run_dir) == steps:
    return {**out, "status": "done"}
  if not attempts:
    return out
  last = attempts[-1]
  if last["returncode"] is None:
    return {**out, "status": "incomplete"}
  if last["returncode"] == 0:
    return {**out, "status": "failed", "error": "exited before the final step"}
  return {**out, "status": "failed", "error": last["error"] or f"exit status {last['returncode']}"}


def run_row(run_dir: str) -> dict:
  """One run's row: point, status, losses, throughput, parameters, wall time, eval tasks."""
  record = read_json(os.path.join(run_dir, RUN_RECORD)) or {}
  metrics = read_metrics(run_dir)
  status = run_status(run_dir, metrics)
  train = [m for m in metrics if "train/loss" in m]
  evals = [m for m in metrics if "eval/loss" in m]
  # The first logging window includes compilation: throughput is the median of the others.
  speeds = [m["train/tokens_per_sec"] for m in train if "train/tokens_per_sec" in m]
  row = {"name": os.path.basename(run_dir), "index": record.get("index"),
         "point": record.get("point", {}), "status": status["status"],
         "step": status["step"], "steps": status["steps"],
         "train_loss": train[-1]["train/loss"] if train else None,
         "eval_loss_best": min(m["eval/loss"] for m in evals) if evals else None,
         "eval_loss_final": evals[-1]["eval/loss"] if evals else None,
         "tokens_per_sec": statistics.median(speeds[1:] or speeds) if speeds else None,
         "params": _params(run_dir),
         "wall_s": round(sum(a["wall_s"] or 0 for a in record.get("attempts", [])), 1),
         "extra": {}, "error": status["error"],
         "curves": {k: [(m["step"], m[k]) for m in metrics if k in m] for k in LOSS_KEYS}}
  for m in metrics:  # eval tasks run during training: eval/<task>/<metric>, the latest value
    for k, v in m.items():
      if k.startswith("eval/") and k not in STANDARD_EVAL_KEYS:
        row["extra"][k] = v
  return row


def collect(out_dir: str) -> list[dict]:
  """The rows of every run directory of a sweep, in the sweep's order."""
  if not os.path.isdir(out_dir):
    from lm.errors import UserError
    raise UserError(f"{out_dir} is not a directory")
  dirs = [os.path.join(out_dir, d) for d in sorted(os.listdir(out_dir))
          if os.path.isfile(os.path.join(out_dir, d, RUN_RECORD))]
  rows = [run_row(d) for d in dirs]
  return sorted(rows, key=lambda r: (r["index"] is None, r["index"], r["name"]))


def _params(run_dir: str) -> int | None:
  if not os.path.exists(os.path.join(run_dir, "model.json")):
    return None
  from lm.model_dir import read_config  # JAX: only for finished runs' rows
  from lm.models.config import num_params
  return num_params(read_config(run_dir))


def write_report(out_dir: str) -> list[dict]:
  """Writes results.csv, results.md and curves.png under out_dir; returns the rows."""
  from lm.sweep import plots, tables
  rows = collect(out_dir)
  if not rows:
    from lm.errors import UserError
    raise UserError(f"{out_dir} holds no sweep run directories (no */{RUN_RECORD})")
  tables.write_csv(rows, os.path.join(out_dir, "results.csv"))
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(tables.markdown(rows))
  plots.write_curves(rows, os.path.join(out_dir, "curves.png"))
  return rows
