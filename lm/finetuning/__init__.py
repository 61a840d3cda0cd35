"""Fine-tuning: starting a run from another model directory, LoRA (lora.py), merging (merge.py).

`source_model_config` is what gin_configs/runs/finetune.gin binds as the run's model: the
ModelConfig saved in the source directory's model.json (a run or an `lm-convert` import), so a
fine-tuning run needs no model gin file and cannot disagree with the weights it starts from.
A tuned run's generation_config.json (its source's end-of-sequence ids, with the end-of-turn
ids it was tuned to close turns with) is written by lm.model_dir.save_generation_config.
"""
import dataclasses
import os

import gin

from lm.errors import UserError
from lm.model_dir import CHANGEABLE_FIELDS, MODEL_JSON, read_config
from lm.models.config import ModelConfig


@gin.configurable
def source_model_config(model_dir: str | None = gin.REQUIRED,
                        changes: dict | None = None) -> ModelConfig:
  """The ModelConfig of `model_dir` (its model.json), with `changes` to
  lm.model_dir.CHANGEABLE_FIELDS (they change how a step computes, not the weights).

  None without a model_dir (lm.training.loop.train then asks for INIT_FROM): gin evaluates
  this while copying bindings, before any run starts, so it must not fail there.
  """
  if not model_dir:
    return None
  if not os.path.exists(os.path.join(os.path.abspath(os.path.expanduser(model_dir)),
                                     MODEL_JSON)):
    raise UserError(f"cannot initialize from {model_dir}: no model.json (not an lm model "
                    "directory)")
  changes = dict(changes or {})
  bad = sorted(set(changes) - set(CHANGEABLE_FIELDS))
  if bad:
    raise UserError(f"source_model_config.changes may set only {', '.join(CHANGEABLE_FIELDS)} "
                    f"(the weights fix the rest); got {', '.join(bad)}")
  return dataclasses.replace(read_config(model_dir), **changes)
