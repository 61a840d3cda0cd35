"""Reading a model directory's float weights for compression.

A compressed directory is written by lm.convert.model_dirs.save_model_dir: a params-only
checkpoint (step 0), the source's tokenizer/ and generation_config.json, and model.json
(written last) with the ModelConfig, the task and one more entry saying what was done
("quantization" or "pruning"); it appears whole or not at all.
"""
import os

from lm.convert.model_dirs import MODEL_JSON, absolute, read_json
from lm.errors import UserError


def load_float(model_dir: str, step: int | None = None):
  """lm.load of a directory that must hold float weights (not already quantized)."""
  import lm
  saved = read_json(os.path.join(absolute(model_dir), MODEL_JSON))
  if saved and "quantization" in saved:
    raise UserError(f"{model_dir} is already quantized ({saved['quantization']['scheme']}); "
                    "start from a float model directory")
  return lm.load(model_dir, step=step)
