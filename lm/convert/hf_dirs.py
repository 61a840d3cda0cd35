"""Whole directories: an HF checkpoint (config.json + safetensors) <-> an lm model dir.

Besides the weights, import copies the HF tokenizer files into MODEL_DIR/tokenizer/ (a
checkpoint without them imports too: the model then takes token ids only) and keeps the
special ids (generation_config.json, else config.json's bos/eos/pad ids) in
MODEL_DIR/generation_config.json; export writes both back. See lm.model_dir for the
directory layout and the all-or-nothing writing.
"""
import json
import os
import shutil

import numpy as np

from lm import tokenizers
from lm.convert import hf, safetensors_io
from lm.errors import UserError
from lm.jsonl import read_json, write_json
from lm.model_dir import GENERATION_CONFIG, absolute, load_params, new_dir, write_model_dir
from lm.models.scanned import stack_layers, unstack_layers
from lm.models.config import ModelConfig

SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def read_hf(hf_dir: str, **overrides) -> tuple[ModelConfig, dict]:
  """(config, numpy params in lm's layout) of an HF checkpoint directory."""
  path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{hf_dir} has no config.json")
  with open(path) as f:
    cfg = hf.config_from_hf(json.load(f), **overrides)
  params = hf.params_from_hf(cfg, safetensors_io.read_dir(hf_dir), cfg.weight_dtype)
  if cfg.scan_layers:
    params = stack_layers(params, cfg.num_layers)
  return cfg, params


def _generation_config(hf_dir: str) -> dict | None:
  """generation_config.json of an HF dir, else the special ids of its config.json."""
  generation = read_json(os.path.join(hf_dir, GENERATION_CONFIG))
  if generation is None:
    config = read_json(os.path.join(hf_dir, "config.json")) or {}
    generation = {k: config[k] for k in SPECIAL_IDS if config.get(k) is not None} or None
  return generation


def copy_hf_tokenizer(source_dir: str, target_dir: str) -> bool:
  """Copies the HF tokenizer files of source_dir (if it has tokenizer.json) to target_dir."""
  if not os.path.exists(os.path.join(source_dir, tokenizers.HF_FILE)):
    return False
  os.makedirs(target_dir, exist_ok=True)
  for name in tokenizers.HF_TOKENIZER_FILES:
    if os.path.exists(os.path.join(source_dir, name)):
      shutil.copyfile(os.path.join(source_dir, name), os.path.join(target_dir, name))
  return True


def import_hf(hf_dir: str, model_dir: str, overwrite: bool = False, **overrides) -> ModelConfig:
  """HF checkpoint dir -> lm model dir (all or nothing); returns the model's config."""
  hf_dir = absolute(hf_dir)
  cfg, params = read_hf(hf_dir, **overrides)
  with new_dir(model_dir, overwrite, [hf_dir]) as tmp:
    copy_hf_tokenizer(hf_dir, tokenizers.tokenizer_dir(tmp))
    generation = _generation_config(hf_dir)
    if generation:
      write_json(os.path.join(tmp, GENERATION_CONFIG), generation)
    write_model_dir(tmp, cfg, params)
  return cfg


def _special_ids(model_dir: str) -> dict:
  """The generation config kept at import, else the ids of the run's own tokenizer."""
  generation = read_json(os.path.join(model_dir, GENERATION_CONFIG))
  if generation is None:
    tok = tokenizers.load_tokenizer(model_dir)
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id} if tok else {}
    generation = {k: v for k, v in ids.items() if v is not None}
  return generation


def export_hf(model_dir: str, hf_dir: str, step: int | None = None,
              overwrite: bool = False) -> ModelConfig:
  """lm model dir -> HF checkpoint dir that AutoModelForCausalLM.from_pretrained (and, where the
  model has an HF tokenizer, AutoTokenizer.from_pretrained) loads."""
  model_dir = absolute(model_dir)
  _, cfg, params = load_params(model_dir, step)
  if cfg.scan_layers:
    params = unstack_layers(params, cfg.num_layers)
  hf_config = hf.config_to_hf(cfg)
  generation = _special_ids(model_dir)
  hf_config.update({k: generation[k] for k in SPECIAL_IDS if generation.get(k) is not None})
  tensors = {k: np.asarray(v) for k, v in hf.params_to_hf(cfg, params).items()}
  with new_dir(hf_dir, overwrite, [model_dir], replaces="config.json") as tmp:
    safetensors_io.write_file(os.path.join(tmp, "model.safetensors"), tensors)
    write_json(os.path.join(tmp, "config.json"), hf_config)
    if generation:
      write_json(os.path.join(tmp, GENERATION_CONFIG), generation)
    copy_hf_tokenizer(tokenizers.tokenizer_dir(model_dir), tmp)
  return cfg
