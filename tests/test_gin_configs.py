"""Every gin file parses and builds its model with jax.eval_shape (no weights allocated)."""
import glob
import os

import gin
import jax
import jax.numpy as jnp
import pytest

import lm.cli.train  # noqa: F401  (registers sample_after_training)
import lm.data.pipeline  # noqa: F401  (registers the SeqIO tasks)
import lm.data.arrays  # noqa: F401  (TF-free inputs)
import lm.data.inputs  # noqa: F401  (InputConfig, make_batches)
from conftest import REPO
from lm.cli.common import parse_gin
from lm.models.config import ModelConfig, num_params
from lm.models.transformer import Transformer

FILES = sorted(glob.glob(os.path.join(REPO, "gin_configs", "**", "*.gin"), recursive=True))


def test_there_are_configs():
  names = {os.path.relpath(f, REPO) for f in FILES}
  for required in ["gin_configs/models/nano.gin", "gin_configs/models/gpt2_124m.gin",
                   "gin_configs/models/llama_1b.gin", "gin_configs/runs/pretrain.gin",
                   "gin_configs/runs/shakespeare_char_cpu.gin",
                   "gin_configs/runs/shakespeare_char.gin"]:
    assert required in names


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.relpath(p, REPO))
def test_config_builds_its_model(path):
  parse_gin([path], [])
  cfg = ModelConfig()
  if "runs" in path:  # a run config also binds its input and training
    train_kwargs = gin.get_bindings("train")
    assert {"steps", "mesh_shape", "model_cfg"} <= set(train_kwargs)
    assert gin.query_parameter("InputConfig.task")
  seq_len = min(cfg.max_len, 128)
  variables = jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0),
                             jnp.zeros((1, seq_len), jnp.int32))
  count = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert count == num_params(cfg)


def _decoy_tree(root):
  """A gin_configs/ tree whose pretrain.gin differs from the repository's."""
  runs = root / "gin_configs" / "runs"
  runs.mkdir(parents=True)
  (runs / "pretrain.gin").write_text("TRAIN_STEPS = 7\n")
  return root


def test_includes_resolve_from_the_given_files_tree_wherever_lm_runs(tmp_path, monkeypatch):
  # The repository on sys.path (PYTHONPATH=repo, `python -m pytest`) makes `gin_configs.runs` a
  # namespace package; the working directory elsewhere, holding another gin_configs/ tree.
  monkeypatch.syspath_prepend(REPO)
  monkeypatch.chdir(_decoy_tree(tmp_path))
  parse_gin([os.path.join(REPO, "gin_configs", "runs", "shakespeare_char_cpu.gin")], [])
  assert gin.query_parameter("%TRAIN_STEPS") == 2000  # the run config's own value
  assert gin.query_parameter("%MESH_SHAPE") == (-1, 1, 1)  # from the repo's pretrain.gin
  assert gin.query_parameter("ModelConfig.num_layers") == 4  # its models/ include


def test_a_missing_include_is_one_user_error(tmp_path, monkeypatch):
  from lm.errors import UserError
  monkeypatch.syspath_prepend(REPO)
  monkeypatch.chdir(tmp_path)
  bad = tmp_path / "gin_configs" / "runs" / "bad.gin"
  bad.parent.mkdir(parents=True)
  bad.write_text("include 'gin_configs/runs/no_such.gin'\n")
  with pytest.raises(UserError, match="bad gin config: Unable to open file: "
                                      "gin_configs/runs/no_such.gin"):
    parse_gin([str(bad)], [])


@pytest.mark.parametrize("binding, message", [
    ("X = (", "bad gin config: ('EOF in multi-line statement'"),  # tokenize's error
    ("import no_such_module", "bad gin config: No module named 'no_such_module'"),
])
def test_gin_errors_are_user_errors(binding, message):
  from lm.errors import UserError
  with pytest.raises(UserError) as e:
    parse_gin([os.path.join(REPO, "gin_configs", "models", "nano.gin")], [binding])
  assert str(e.value).startswith(message)
