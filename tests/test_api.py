"""lm.load: the notebook API over a trained run."""
import os

import jax
import numpy as np

import lm
from lm.models.config import num_params


def test_load_gives_config_params_and_logits(trained_run):
  model = lm.load(trained_run)
  assert model.config.d_model == 32 and model.task == "tiny_shakespeare_char"
  tokens = np.array([[5, 9, 13, 22], [1, 2, 3, 4]])
  logits = model.logits(tokens)
  assert logits.shape == (2, 4, 68) and logits.dtype == np.float32
  expected = model.module.apply({"params": model.params}, tokens)
  np.testing.assert_allclose(logits, expected, atol=1e-6)
  leaves = jax.tree.leaves(model.params)
  assert sum(x.size for x in leaves) == num_params(model.config) == 19_744


def test_greedy_generate_matches_argmax_of_logits(trained_run):
  model = lm.load(trained_run)
  prompt = [10, 20, 30]
  seq, expected = list(prompt), []
  for _ in range(6):
    next_token = int(np.asarray(model.logits([seq]))[0, -1].argmax())
    expected.append(next_token)
    seq.append(next_token)
    if next_token in model.eos_ids:
      break
  assert model.generate([prompt], max_new_tokens=6) == [expected]


def test_load_accepts_a_relative_path(trained_run, monkeypatch):
  """Issue 8 item 1: Orbax wants absolute paths; lm.load must resolve relative ones."""
  monkeypatch.chdir(os.path.dirname(trained_run))
  model = lm.load(os.path.basename(trained_run))
  np.testing.assert_array_equal(model.logits([[5, 9]]), lm.load(trained_run).logits([[5, 9]]))


def test_load_restores_a_run_saved_on_another_mesh(trained_run):
  # trained_run was saved from an 8-device data-parallel mesh; load puts it on one device.
  model = lm.load(trained_run)
  leaf = jax.tree.leaves(model.params)[0]
  assert len(leaf.sharding.device_set) == 1
