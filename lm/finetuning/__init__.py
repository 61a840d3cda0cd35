"""Fine-tuning: starting a run from another model directory, LoRA (lora.py), merging (merge.py).

`source_model_config` is what gin_configs/runs/finetune.gin binds as the run's model: the
ModelConfig saved in the source directory's model.json (a run or an `lm-convert` import), so a
fine-tuning run needs no model gin file and cannot disagree with the weights it starts from.
"""
import dataclasses
import json
import os

import gin

from lm.errors import UserError
from lm.models.config import ModelConfig

# Fields a fine-tuning run may change: they change how a step computes, not the weights
# (the fields lm.training.run_dir lets a resume change).
CHANGEABLE_FIELDS = ("remat", "dtype", "attention_backend", "dropout_rate",
                     "attention_dropout_rate")


@gin.configurable
def source_model_config(model_dir: str | None = gin.REQUIRED,
                        changes: dict | None = None) -> ModelConfig:
  """The ModelConfig of `model_dir` (its model.json), with `changes` to CHANGEABLE_FIELDS.

  None without a model_dir (lm.training.loop.train then asks for INIT_FROM): gin evaluates
  this while copying bindings, before any run starts, so it must not fail there.
  """
  if not model_dir:
    return None
  path = os.path.join(os.path.abspath(os.path.expanduser(model_dir)), "model.json")
  if not os.path.exists(path):
    raise UserError(f"cannot initialize from {model_dir}: no model.json (not an lm model "
                    "directory)")
  with open(path) as f:
    saved = json.load(f)["model"]
  changes = dict(changes or {})
  bad = sorted(set(changes) - set(CHANGEABLE_FIELDS))
  if bad:
    raise UserError(f"source_model_config.changes may set only {', '.join(CHANGEABLE_FIELDS)} "
                    f"(the weights fix the rest); got {', '.join(bad)}")
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  return ModelConfig(**{k: v for k, v in {**saved, **changes}.items() if k in known})
