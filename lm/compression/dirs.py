"""Reading a model directory's float weights and writing compressed ones as lm model dirs.

A written directory holds what `lm.load` reads: a params-only checkpoint (step 0), the
source's tokenizer/ and generation_config.json, and model.json (written last) with the
ModelConfig, the task and one more entry saying what was done ("quantization" or "pruning").
The directory appears whole or not at all (lm.convert.model_dirs.new_dir).
"""
import dataclasses
import json
import os
import shutil

from lm.convert.model_dirs import GENERATION_CONFIG, MODEL_JSON, absolute, new_dir, read_json
from lm.errors import UserError
from lm.training import checkpoints


def load_float(model_dir: str, step: int | None = None):
  """lm.load of a directory that must hold float weights (not already quantized)."""
  import lm
  saved = read_json(os.path.join(absolute(model_dir), MODEL_JSON))
  if saved and "quantization" in saved:
    raise UserError(f"{model_dir} is already quantized ({saved['quantization']['scheme']}); "
                    "start from a float model directory")
  return lm.load(model_dir, step=step)


def write_dir(out_dir: str, source_dir: str, model, params, entry: tuple[str, dict],
              overwrite: bool = False):
  """Writes `params` (host or device arrays) as a new model dir beside `model`'s tokenizer.

  model: the source's LoadedModel (config, task); entry: (key, value) added to model.json.
  """
  source_dir = absolute(source_dir)
  if absolute(out_dir) == source_dir:
    raise UserError("--out_dir must differ from --model_dir")
  with new_dir(out_dir, overwrite) as tmp:
    for name in ("tokenizer", GENERATION_CONFIG):
      src = os.path.join(source_dir, name)
      if os.path.isdir(src):
        shutil.copytree(src, os.path.join(tmp, name))
      elif os.path.exists(src):
        shutil.copy(src, os.path.join(tmp, name))
    checkpoints.save_params(os.path.join(tmp, "checkpoints"), params)
    with open(os.path.join(tmp, MODEL_JSON), "w") as f:
      json.dump({"model": dataclasses.asdict(model.config), "task": model.task,
                 entry[0]: entry[1]}, f, indent=1)

