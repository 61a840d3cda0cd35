"""The run directory's description files: what a resume must match, written once a start is good.

MODEL_DIR/model.json holds the ModelConfig and task (what lm.load builds); MODEL_DIR/run.json
holds the settings that a checkpoint's data position and learning-rate schedule depend on, and
the run's id (W&B), which stays the same across resumes.
"""
import dataclasses
import json
import os
import uuid

import gin
import jax

from lm.errors import UserError
from lm.jsonl import read_json
from lm.model_dir import CHANGEABLE_FIELDS, MODEL_JSON, model_config, write_model_json
from lm.models.config import ModelConfig

RUN_JSON = "run.json"


def run_settings(input_cfg, optimizer_cfg, steps: int) -> dict:
  """The input and optimizer settings that a saved data position and schedule mean.

  The shard count is the resolved one. TRAIN_STEPS counts only where the schedule uses it
  (decay_steps of a cosine or linear decay defaults to it), so a run with explicit
  OptimizerConfig.decay_steps, or no decay, may be extended.
  """
  data = {"kind": type(input_cfg).__name__, **dataclasses.asdict(input_cfg)}
  if hasattr(input_cfg, "shards"):
    data["num_shards"] = input_cfg.shards()
  opt = dataclasses.asdict(optimizer_cfg)
  uses_steps = optimizer_cfg.decay in ("cosine", "linear")
  opt["decay_steps"] = (optimizer_cfg.decay_steps or steps) if uses_steps else None
  return {"input": data, "optimizer": opt}


def check_resume(model_dir: str, model_cfg: ModelConfig, settings: dict) -> str | None:
  """Refuses (one UserError listing every difference) to continue a run configured otherwise.

  Returns the saved run id, None for a new run directory (or one without run.json, such as an
  lm-convert import).
  """
  path = os.path.join(model_dir, MODEL_JSON)
  saved_model = read_json(path)
  if saved_model is None:
    return None
  # A resume may change CHANGEABLE_FIELDS only (lm.model_dir: they do not change the weights).
  saved = dataclasses.asdict(model_config(saved_model["model"], path))
  model = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in CHANGEABLE_FIELDS}
  diffs = _diffs("ModelConfig", saved, model)
  run = read_json(os.path.join(model_dir, RUN_JSON)) or {}
  for part in ("input", "optimizer"):
    if part in run:
      diffs += _diffs(part, run[part], settings[part])
  if diffs:
    hint = (" (decay_steps defaults to TRAIN_STEPS; set OptimizerConfig.decay_steps to extend a "
            "run)" if any(d.startswith("optimizer.decay_steps") for d in diffs) else "")
    raise UserError(f"{model_dir} holds a different run (saved -> configured: "
                    f"{'; '.join(diffs)}){hint}; use a new --model_dir")
  return run.get("run_id")


def _diffs(prefix: str, saved: dict, configured: dict) -> list[str]:
  return [f"{prefix}.{k}: {saved.get(k)!r} -> {configured.get(k)!r}"
          for k in sorted(set(saved) | set(configured)) if k in configured
          and saved.get(k) != configured.get(k)]


def write_run_files(model_dir: str, model_cfg: ModelConfig, task: str | None, settings: dict,
                    steps: int, run_id: str | None) -> str:
  """Writes model.json, run.json, config.gin and the task's tokenizer; returns the run id.

  Called once the start is known good (nothing is written before). Only process 0 writes.
  """
  run_id = run_id or uuid.uuid4().hex
  if jax.process_index() != 0:
    return run_id
  os.makedirs(model_dir, exist_ok=True)
  # seqio's decoder inputs start every document with id 0 (corpus windows have no start).
  documents = settings["input"].get("kind") == "InputConfig" and not settings["input"].get(
      "continuous")
  _save_tokenizer(task, model_dir, 0 if documents else None)
  with open(os.path.join(model_dir, RUN_JSON), "w") as f:
    json.dump({"run_id": run_id, "train_steps": steps, **settings}, f, indent=1)
  write_model_json(model_dir, model_cfg, task)
  with open(os.path.join(model_dir, "config.gin"), "w") as f:
    f.write(gin.operative_config_str())
  return run_id


def _save_tokenizer(task: str | None, model_dir: str, start_id: int | None):
  """The task's tokenizer beside the model, for TF-free decoding (lm.load, lm-sample).

  Exporting it needs the task's SeqIO vocabulary; on an image without TensorFlow it is skipped.
  """
  if not task:
    return
  try:
    from lm.data.tokenizer_export import save_task_tokenizer
  except ImportError:
    return
  save_task_tokenizer(task, model_dir, start_id)
