"""Fine-tuning: starting a run from another model directory, LoRA (lora.py), merging (merge.py).

`source_model_config` is what gin_configs/runs/finetune.gin binds as the run's model: the
ModelConfig saved in the source directory's model.json (a run or an `lm-convert` import), so a
fine-tuning run needs no model gin file and cannot disagree with the weights it starts from.
`save_generation_config` gives a run its source's generation_config.json (an import's
end-of-sequence ids), with the end-of-turn ids the run was tuned to close turns with.
"""
import dataclasses
import json
import os
import tempfile

import gin

from lm.errors import UserError
from lm.models.config import ModelConfig
from lm.tokenizers import load_tokenizer

GENERATION_FILE = "generation_config.json"  # HF's: bos/eos/pad ids and decoding defaults

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


def save_generation_config(model_dir: str, source_dir: str | None, eos_ids) -> None:
  """Writes MODEL_DIR/generation_config.json (lm.load's and HF generate's end-of-sequence ids):
  source_dir's (e.g. an import's, with its decoding defaults), its eos_token_id joined by the
  tokenizer's EOS and `eos_ids` (the ids that close the turns a run was tuned on, e.g. the
  llama3 template's <|eot_id|>). Not written where source_dir has none and eos_ids add nothing
  to the tokenizer's EOS (generation stops there anyway).
  """
  source = os.path.join(source_dir, GENERATION_FILE) if source_dir else None
  config = None
  if source and os.path.exists(source):
    with open(source, encoding="utf-8") as f:
      config = json.load(f)
  tokenizer = load_tokenizer(model_dir)
  eos = None if tokenizer is None else tokenizer.eos_id
  extra = {int(i) for i in eos_ids} - {eos}
  if config is None and not extra:
    return
  config = dict(config or {})
  listed = config.get("eos_token_id")
  listed = listed if isinstance(listed, list) else [] if listed is None else [listed]
  ids = sorted(set(listed) | extra | ({eos} if eos is not None else set()))
  config["eos_token_id"] = ids[0] if len(ids) == 1 else ids
  fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".generation-", suffix=".json")
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  os.replace(tmp, os.path.join(model_dir, GENERATION_FILE))
