"""Whole directories: an HF checkpoint (config.json + safetensors) <-> an lm model dir.

An lm model dir is what lm-train writes: model.json ({"model": ModelConfig fields, "task"})
and Orbax checkpoints under checkpoints/; an imported one holds the params item only, which
`lm.load`, `lm-sample` and `lm-train` (through `train.init_from`) read.
"""
import dataclasses
import json
import os

import numpy as np

from lm.api import load
from lm.convert import hf, safetensors_io
from lm.errors import UserError
from lm.models.config import ModelConfig
from lm.training import checkpoints

MODEL_JSON = "model.json"  # as lm.training.loop writes it


def read_hf(hf_dir: str, **overrides) -> tuple[ModelConfig, dict]:
  """(config, numpy params in lm's layout) of an HF checkpoint directory."""
  path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{hf_dir} has no config.json")
  with open(path) as f:
    cfg = hf.config_from_hf(json.load(f), **overrides)
  params = hf.params_from_hf(cfg, safetensors_io.read_dir(hf_dir), cfg.weight_dtype)
  if cfg.scan_layers:
    params = hf.stack_layers(params, cfg.num_layers)
  return cfg, params


def write_model_dir(model_dir: str, cfg: ModelConfig, params, task: str | None = None):
  """model.json and a params-only checkpoint (step 0)."""
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, MODEL_JSON), "w") as f:
    json.dump({"model": dataclasses.asdict(cfg), "task": task}, f, indent=1)
  checkpoints.save_params(os.path.join(model_dir, "checkpoints"), params)


def import_hf(hf_dir: str, model_dir: str, **overrides) -> ModelConfig:
  """HF checkpoint dir -> lm model dir; returns the model's config."""
  cfg, params = read_hf(hf_dir, **overrides)
  write_model_dir(model_dir, cfg, params)
  return cfg


def export_hf(model_dir: str, hf_dir: str, step: int | None = None) -> ModelConfig:
  """lm model dir -> HF checkpoint dir that AutoModelForCausalLM.from_pretrained loads."""
  loaded = load(model_dir, step)
  cfg, params = loaded.config, loaded.params
  if cfg.scan_layers:
    params = hf.unstack_layers(params, cfg.num_layers)
  hf_config = hf.config_to_hf(cfg)
  tensors = {k: np.asarray(v) for k, v in hf.params_to_hf(cfg, params).items()}
  os.makedirs(hf_dir, exist_ok=True)
  safetensors_io.write_file(os.path.join(hf_dir, "model.safetensors"), tensors)
  with open(os.path.join(hf_dir, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
  return cfg
