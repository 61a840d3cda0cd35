"""lm-prune / lm.compression.prune: exact sparsity, the 2:4 pattern, Wanda's scores against
numpy, and masks that AdamW training (weight decay included) and checkpoints keep."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lm
from conftest import NANO_RUN, REPO
from lm.cli import prune as prune_cli
from lm.cli import train as train_cli
from lm.compression import calibration, masks, prune
from lm.models.kernels import get_path
from lm.models.config import ModelConfig
from lm.models.transformer import Transformer

TINY = ModelConfig(vocab_size=24, d_model=16, num_layers=2, num_heads=2, mlp_dim=32, max_len=16,
                   init_std=0.5)


def _tiny_params(cfg=TINY):
  return nn.meta.unbox(Transformer(cfg).init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 4), jnp.int32))["params"])


def test_unstructured_sparsity_is_exact_with_ties():
  scores = np.random.default_rng(0).integers(0, 3, size=(2, 10, 7)).astype(np.float32)
  keep = prune.keep_mask(scores, 0.3, "unstructured", per_column=False)
  assert (keep == 0).reshape(2, -1).sum(axis=1).tolist() == [21, 21]  # round(0.3 * 70) per layer
  # what is pruned scores no higher than what is kept, in each layer
  for s, k in zip(scores, keep):
    assert s[~k].max() <= s[k].min()
  keep = prune.keep_mask(scores, 0.3, "unstructured", per_column=True)
  assert ((keep == 0).sum(axis=1) == 3).all()  # round(0.3 * 10) in every column


def test_two_four_pattern_in_every_group_of_four_inputs():
  scores = np.abs(np.random.default_rng(1).normal(size=(3, 16, 5)))  # [layers, I, O]
  keep = prune.keep_mask(scores, 0.5, "2:4", per_column=False)
  groups = keep.reshape(3, 4, 4, 5)  # [layers, I/4, 4, O]
  assert (groups.sum(axis=2) == 2).all()
  top2 = np.sort(scores.reshape(3, 4, 4, 5), axis=2)[:, :, 2:, :]
  np.testing.assert_array_equal(np.sort(np.where(groups, scores.reshape(groups.shape), -1),
                                        axis=2)[:, :, 2:, :], top2)


def _layer_norm(x, scale, eps):
  x = x - x.mean(-1, keepdims=True)
  return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * scale


def test_wanda_input_norms_and_masks_equal_numpy():
  params = _tiny_params()
  tokens = np.random.default_rng(2).integers(0, 24, size=(5, 12)).astype(np.int32)
  norms = calibration.input_stats(TINY, params, tokens, batch_rows=2)
  embed = np.asarray(params["embed"]["embedding"])[tokens] + np.asarray(
      params["pos_embed"]["embedding"])[np.arange(12)]
  x = _layer_norm(embed, np.asarray(params["layer_0"]["ln_attn"]["scale"]), TINY.norm_eps)
  expected = (x.reshape(-1, 16) ** 2).sum(axis=0)
  for name in ("query", "key", "value"):
    np.testing.assert_allclose(norms[("layer_0", "attn", name, "kernel")], expected, rtol=1e-4)
  assert norms[("layer_1", "mlp", "wo", "kernel")].shape == (32,)

  pruned, sparsity = prune.prune_params(params, TINY, 0.5, "unstructured", "wanda", norms)
  w = np.asarray(params["layer_0"]["attn"]["query"]["kernel"]).reshape(16, -1)
  got = np.asarray(pruned["layer_0"]["attn"]["query"]["kernel"]).reshape(16, -1)
  score = np.abs(w) * np.sqrt(expected)[:, None]
  for o in range(w.shape[1]):  # each output column drops its 8 lowest-scoring inputs
    dropped = np.argsort(score[:, o], kind="stable")[:8]
    assert (got[dropped, o] == 0).all() and (got[np.setdiff1d(np.arange(16), dropped), o] != 0).all()
  assert set(sparsity.values()) == {0.5}
  assert "unembed/kernel" not in sparsity and "embed/embedding" not in sparsity


def test_wanda_on_scanned_layers_equals_unrolled():
  scanned = ModelConfig(**{**TINY.__dict__, "scan_layers": True})
  params = _tiny_params(scanned)
  tokens = np.random.default_rng(3).integers(0, 24, size=(2, 8)).astype(np.int32)
  norms = calibration.input_stats(scanned, params, tokens)
  unrolled = calibration.input_stats(*calibration._unscanned(scanned, params), tokens)
  for i in range(2):
    np.testing.assert_allclose(norms[("layers", "mlp", "wi", "kernel")][i],
                               unrolled[(f"layer_{i}", "mlp", "wi", "kernel")], rtol=1e-6)
  pruned, sparsity = prune.prune_params(params, scanned, 0.5, "2:4", "wanda", norms)
  kernel = np.asarray(pruned["layers"]["attn"]["out"]["kernel"])  # [L, H, K, D]: I = H * K
  assert ((kernel.reshape(2, 4, 4, 16) != 0).sum(axis=2) == 2).all()


def test_keep_zeros_holds_through_adamw_with_weight_decay():
  params = {"k": jnp.array([[0.0, 1.0], [2.0, 0.0]]), "b": jnp.array([0.0, 3.0])}
  for wrap, should_hold in ((True, True), (False, False)):
    tx = optax.adamw(0.1, weight_decay=0.5)
    tx = masks.keep_zeros(tx, [("k",)]) if wrap else tx
    p, state = params, tx.init(params)
    for step in range(3):
      grads = jax.tree.map(lambda x: jnp.full_like(x, step + 1.0), p)
      updates, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, updates)
    assert bool((p["k"][[0, 1], [0, 1]] == 0).all()) == should_hold
    assert (p["k"][[0, 1], [1, 0]] != params["k"][[0, 1], [1, 0]]).all()
    assert p["b"][0] != 0  # only the listed params are masked


def _run(argv, cli=prune_cli):
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  return e.value.code


def test_masks_survive_recovery_training_and_a_resume(trained_run, tmp_path):
  pruned_dir, run_dir = str(tmp_path / "pruned"), str(tmp_path / "recovered")
  assert _run([f"--model_dir={trained_run}", f"--out_dir={pruned_dir}", "--pattern=2:4"]) == 0
  with open(os.path.join(pruned_dir, "model.json")) as f:
    entry = json.load(f)["pruning"]
  assert entry["pattern"] == "2:4" and "layer_0/mlp/wo/kernel" in entry["kernels"]
  pruned = lm.load(pruned_dir).params
  before = lm.load(trained_run).params
  args = [f"--model_dir={run_dir}", f"--gin.train.init_from='{pruned_dir}'",
          "--gin.OptimizerConfig.decay='constant'", "--gin.OptimizerConfig.warmup_steps=0",
          "--gin.CHECKPOINT_EVERY=2", "--gin.EVAL_STEPS=0"] + NANO_RUN[:-1]
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    assert _run(args + ["--gin.TRAIN_STEPS=2"], train_cli) == 0
    assert _run(args + ["--gin.TRAIN_STEPS=4"], train_cli) == 0  # resumes from step 2
  finally:
    os.chdir(cwd)
  for step in (2, 4):
    trained = lm.load(run_dir, step=step).params
    for name in entry["kernels"]:
      path = tuple(name.split("/"))
      zeros, now = np.asarray(get_path(pruned, path)) == 0, np.asarray(get_path(trained, path))
      assert zeros.mean() == 0.5, name
      np.testing.assert_array_equal(now == 0, zeros, err_msg=name)  # same zeros, no others
      assert (now[~zeros] != np.asarray(get_path(pruned, path))[~zeros]).all(), name
    assert not np.array_equal(trained["embed"]["embedding"], before["embed"]["embedding"])


@pytest.mark.parametrize("args, message", [
    (["--pattern=2:4", "--sparsity=0.3"], "2:4 means --sparsity 0.5"),
    (["--method=wanda"], "needs --calibration_task"),
    (["--method=wanda", "--calibration_task=ppl:/nonexistent/*.txt"], "no file matches"),
    (["--method=wanda", "--calibration_task=wiki"], "expected ppl:"),
    (["--sparsity=1.5"], "--sparsity must be in [0, 1)"),
])
def test_user_errors_leave_nothing(trained_run, tmp_path, capsys, args, message):
  out = tmp_path / "sub" / "p"
  assert _run([f"--model_dir={trained_run}", f"--out_dir={out}"] + args) == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "sub").exists()


def test_wanda_from_text_files(trained_run, tmp_path):
  (tmp_path / "calib.txt").write_text("ROMEO: What light through yonder window breaks?\n" * 20)
  out = str(tmp_path / "w")
  assert _run([f"--model_dir={trained_run}", f"--out_dir={out}", "--method=wanda",
               "--pattern=2:4", f"--calibration_task=ppl:{tmp_path / 'calib.txt'}",
               "--calibration_rows=4", "--calibration_len=16"]) == 0
  params = lm.load(out).params
  kernel = np.asarray(params["layer_1"]["mlp"]["wi"]["kernel"])  # [I=32, O=64]
  assert ((kernel.reshape(8, 4, 64) != 0).sum(axis=1) == 2).all()
  assert lm.load(out).generate(["ROMEO:"], max_new_tokens=4)[0]  # a normal directory
