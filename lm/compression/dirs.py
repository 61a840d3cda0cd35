"""Reading a model directory's float weights for compression.

A compressed directory is written by lm.model_dir.save_model_dir: a params-only
checkpoint (step 0), the source's tokenizer/ and generation_config.json, and model.json
(written last) with the ModelConfig, the task and one more entry saying what was done
("quantization" or "pruning"); it appears whole or not at all.
"""
from lm.errors import UserError
from lm.model_dir import read_model_json


def load_float(model_dir: str, step: int | None = None):
  """lm.load of a directory that must hold float weights (not already quantized)."""
  import lm
  saved = read_model_json(model_dir)
  if "quantization" in saved:
    raise UserError(f"{model_dir} is already quantized ({saved['quantization']['scheme']}); "
                    "start from a float model directory")
  return lm.load(model_dir, step=step)
