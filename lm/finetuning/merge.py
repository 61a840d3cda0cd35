"""`lm-convert merge-lora`: a LoRA run -> a plain model directory holding the merged weights.

The output is what `lm-convert import-*` writes (model.json, a params-only checkpoint at step
0, the tokenizer, generation_config.json where the run or its base has one), so `lm.load`,
`lm-sample`, `lm-eval`, `lm-convert export-hf` and `train.init_from` read it like any other.
"""
from lm.errors import UserError
from lm.model_dir import absolute, check_new_dir, load_params, read_lora_json, save_model_dir
from lm.models.config import ModelConfig


def merge_lora(model_dir: str, out_dir: str, step: int | None = None,
               overwrite: bool = False) -> ModelConfig:
  """Writes W + (alpha / r) * A @ B of the run's checkpoint `step` (default the latest) to
  `out_dir` (all or nothing); returns the model's config."""
  model_dir = absolute(model_dir)
  saved = read_lora_json(model_dir)
  if saved is None:
    raise UserError(f"{model_dir} is not a LoRA run (no lora.json)")
  sources = [model_dir, saved["base"]]  # the tokenizer: the run's, else its base's
  check_new_dir(out_dir, overwrite, sources)
  saved, cfg, params = load_params(model_dir, step)
  save_model_dir(out_dir, cfg, params, sources, saved.get("task"), overwrite=overwrite)
  return cfg
