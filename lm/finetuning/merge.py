"""`lm-convert merge-lora`: a LoRA run -> a plain model directory holding the merged weights.

The output is what `lm-convert import-*` writes (model.json, a params-only checkpoint at step
0, the tokenizer, generation_config.json where the run or its base has one), so `lm.load`,
`lm-sample`, `lm-eval`, `lm-convert export-hf` and `train.init_from` read it like any other.
"""
import os
import shutil

from lm.api import load
from lm.convert.model_dirs import GENERATION_CONFIG, absolute, new_dir, write_model_dir
from lm.errors import UserError
from lm.finetuning.lora import read_lora_json
from lm.models.config import ModelConfig
from lm.tokenizers import TOKENIZER_DIR


def merge_lora(model_dir: str, out_dir: str, step: int | None = None,
               overwrite: bool = False) -> ModelConfig:
  """Writes W + (alpha / r) * A @ B of the run's checkpoint `step` (default the latest) to
  `out_dir` (all or nothing); returns the model's config."""
  model_dir, out_dir = absolute(model_dir), absolute(out_dir)
  saved = read_lora_json(model_dir)
  if saved is None:
    raise UserError(f"{model_dir} is not a LoRA run (no lora.json)")
  if out_dir in (model_dir, saved["base"]):
    raise UserError(f"--out_dir {out_dir} is the LoRA run or its base; give a new directory")
  loaded = load(model_dir, step)
  with new_dir(out_dir, overwrite) as tmp:
    for name in (TOKENIZER_DIR, GENERATION_CONFIG):
      source = next((os.path.join(d, name) for d in (model_dir, saved["base"])
                     if os.path.exists(os.path.join(d, name))), None)
      if source and os.path.isdir(source):
        shutil.copytree(source, os.path.join(tmp, name))
      elif source:
        shutil.copyfile(source, os.path.join(tmp, name))
    write_model_dir(tmp, loaded.config, loaded.params, loaded.task)
  return loaded.config
