"""lm.model_dir: one rule for reading model.json, whoever reads it (issue 20 item 1)."""
import dataclasses
import json

import pytest

import lm
from lm.errors import UserError
from lm.finetuning import source_model_config
from lm.model_dir import CHANGEABLE_FIELDS, model_config, read_config
from lm.models.config import ModelConfig
from lm.sweep import results
from lm.training.run_dir import check_resume

SETTINGS = {"input": {}, "optimizer": {}}


def _model_dir(tmp_path, **changes):
  """A directory whose model.json holds ModelConfig()'s fields with `changes` (None: drop)."""
  fields = {**dataclasses.asdict(ModelConfig()), **changes}
  fields = {k: v for k, v in fields.items() if v is not None}
  (tmp_path / "model.json").write_text(json.dumps({"model": fields, "task": None}))
  return str(tmp_path)


def test_an_unknown_field_is_an_error_naming_it_for_every_reader(tmp_path):
  run = _model_dir(tmp_path, n_experts=4)
  readers = {"read_config": lambda: read_config(run),
             "lm.load": lambda: lm.load(run),
             "source_model_config": lambda: source_model_config(run),
             "check_resume": lambda: check_resume(run, ModelConfig(), SETTINGS),
             "sweep row": lambda: results._params(run)}
  for name, read in readers.items():
    with pytest.raises(UserError, match="unknown ModelConfig field.* n_experts"):
      read()
      pytest.fail(f"{name} accepted an unknown field")


def test_a_missing_field_takes_its_default(tmp_path):
  run = _model_dir(tmp_path, mlp_dim=None, d_model=64)
  assert read_config(run) == ModelConfig(d_model=64)
  assert source_model_config(run, {"remat": "full"}) == ModelConfig(d_model=64, remat="full")
  assert check_resume(run, ModelConfig(d_model=64, dtype="bfloat16"), SETTINGS) is None
  with pytest.raises(UserError, match=r"ModelConfig.mlp_dim: 512 -> 256"):
    check_resume(run, ModelConfig(d_model=64, mlp_dim=256), SETTINGS)


def test_changeable_fields_are_model_config_fields():
  names = {f.name for f in dataclasses.fields(ModelConfig)}
  assert set(CHANGEABLE_FIELDS) <= names
  assert model_config({"dtype": "bfloat16"}, "x") == ModelConfig(dtype="bfloat16")
