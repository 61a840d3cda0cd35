"""lm-info: each real-size config has its published parameter count, computed without weights."""
import os

import jax
import pytest

from conftest import REPO
from lm.cli import info
from lm.cli.common import parse_gin
from lm.models.config import ModelConfig, num_params

PUBLISHED = {
    "gpt2_124m": 124_439_808,
    "gpt2_355m": 354_823_168,
    "llama3_2_1b": 1_235_814_400,
    "llama_1b": 1_235_814_400,
    "llama3_8b": 8_030_261_248,
    "llama3_1_8b": 8_030_261_248,
    "tinyllama_1_1b": 1_100_048_384,
    "smollm_135m": 134_515_008,
    "pythia_160m": 162_322_944,
}


def _config(name: str) -> ModelConfig:
  parse_gin([os.path.join(REPO, "gin_configs", "models", f"{name}.gin")], [])
  return ModelConfig()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name):
  cfg = _config(name)
  abstract = info.abstract_params(cfg)
  assert sum(leaf.size for leaf in jax.tree.leaves(abstract)) == PUBLISHED[name]
  assert num_params(cfg) == PUBLISHED[name]


@pytest.mark.parametrize("name", ["gpt2_small", "llama_small", "neox_small", "gptj_small",
                                  "nano", "shakespeare_char_cpu"])
def test_small_configs_count_exactly(name):
  cfg = _config(name)
  assert sum(leaf.size for leaf in jax.tree.leaves(info.abstract_params(cfg))) == num_params(cfg)


def test_cli_prints_params_flops_and_table(capsys):
  path = os.path.join(REPO, "gin_configs", "models", "gpt2_124m.gin")
  with pytest.raises(SystemExit) as exit_info:
    info.main([f"--gin_file={path}", "--gin.ModelConfig.num_layers=2", "--seq_len=128"])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert "params: 53561088" in out  # 124,439,808 - 10 layers of 7,087,872
  assert "train FLOPs/token" in out and "layer_*/mlp" in out


def test_cli_bad_binding_is_a_user_error(capsys):
  path = os.path.join(REPO, "gin_configs", "models", "nano.gin")
  with pytest.raises(SystemExit) as exit_info:
    info.main([f"--gin_file={path}", "--gin.ModelConfig.positions='rotary'"])
  assert exit_info.value.code == 2
  assert "unknown positions" in capsys.readouterr().err
