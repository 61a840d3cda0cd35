"""lm.load: the notebook API over a trained run, and lm-sample."""
import os

import jax
import numpy as np

import lm
from lm.models.config import num_params
from lm.cli import sample


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


def test_greedy_sampling_matches_argmax_of_logits(trained_run):
  model = lm.load(trained_run)
  prompt = np.array([[10, 20, 30]])
  out = model.sample(prompt, num_steps=3, temperature=0.0)
  seq = prompt
  for _ in range(3):
    next_token = np.asarray(model.logits(seq))[:, -1].argmax(-1)
    seq = np.concatenate([seq, next_token[:, None]], axis=1)
  np.testing.assert_array_equal(out, seq)


def test_lm_sample_cli(trained_run, capsys):
  try:
    sample.main([f"--model_dir={trained_run}", "--prompt=ROMEO:", "--num_tokens=20"])
  except SystemExit as e:
    assert e.code == 0
  out = capsys.readouterr().out
  assert out.startswith("ROMEO:") and len(out.splitlines()[0]) >= 6


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
