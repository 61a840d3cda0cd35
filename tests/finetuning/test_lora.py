"""LoRA (lm/finetuning/lora.py): the merge against an activation-space computation, sizes,
sharding, a LoRA run (frozen base, adapters-only checkpoints, resume), lm.load and merge-lora."""
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import lm
from conftest import REPO
from lm.cli import convert, train
from lm.cli import prune as prune_cli
from lm.models.kernels import get_path
from lm.errors import UserError
from lm.model_dir import read_params
from lm.models.lora import Adapters, LoraConfig, merge
from lm.models.config import ModelConfig
from lm.models.layers import DenseGeneral
from lm.models.transformer import Transformer
from lm.sharding import make_mesh, param_shardings
from helpers import snapshot, train_fails

NANO = dict(vocab_size=68, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=32)
LORA_RUN = [f"--gin_file={REPO}/gin_configs/runs/lora.gin", "--gin.SEQ_LEN=32",
            "--gin.BATCH_SIZE=8", "--gin.EVAL_STEPS=1", "--gin.LOG_EVERY=3",
            "--gin.CHECKPOINT_EVERY=3", "--gin.TRAIN_STEPS=6", "--gin.LORA_RANK=4",
            "--gin.LoraConfig.base_dtype='bfloat16'", "--gin.OptimizerConfig.warmup_steps=2",
            "--gin.sample_after_training.num_tokens=0", "--gin.train.progress=False"]


def _init(cfg, lora, seed=0):
  """Random base params and adapters (B too: a fresh run's B is zero), drawn with numpy on
  the shapes jax.eval_shape gives (no initializer is compiled)."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  rng = np.random.default_rng(seed)
  draw = lambda tree, std: jax.tree.map(
      lambda x: jnp.asarray(std * rng.standard_normal(x.shape), jnp.float32),
      nn.meta.unbox(jax.eval_shape(tree.init, jax.random.PRNGKey(0), tokens)["params"]))
  return draw(Transformer(cfg), 0.1), draw(Adapters(cfg, lora), 0.2)


def test_merged_logits_equal_base_plus_low_rank_path_on_activations():
  """W + s*A@B in the weights == x@W + s*(x@A)@B computed on activations (flax interceptor)."""
  cfg = ModelConfig(**NANO, activation="swiglu")  # wi_gate too
  lora = LoraConfig(rank=3, alpha=5.0)
  base, adapters = _init(cfg, lora)
  tokens = jax.random.randint(jax.random.PRNGKey(9), (2, 16), 0, cfg.vocab_size)

  def low_rank_path(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    module = context.module
    if not isinstance(module, DenseGeneral) or context.method_name != "__call__":
      return y
    node = adapters
    for key in module.path:
      node = node.get(key, {})
    if "lora_a" not in node:  # not a target (the unembedding)
      return y
    a, b, x = node["lora_a"], node["lora_b"], args[0]
    n_in = len(module.in_shape)
    h = jnp.tensordot(x, a, axes=n_in)  # [..., r]
    return y + lora.scale * jnp.tensordot(h, b, axes=1)

  apply = jax.jit(lambda params: Transformer(cfg).apply({"params": params}, tokens))

  @jax.jit
  def reference_fn(params):
    with nn.intercept_methods(low_rank_path):
      return Transformer(cfg).apply({"params": params}, tokens)

  reference, plain = reference_fn(base), apply(base)
  merged = apply(merge(base, adapters, lora))
  assert float(jnp.max(jnp.abs(reference - plain))) > 0.02  # the adapters matter
  np.testing.assert_allclose(merged, reference, atol=2e-5, rtol=1e-5)


def test_scanned_kernels_adapt_layer_by_layer_and_shard_like_the_base():
  cfg = ModelConfig(**NANO, scan_layers=True)
  lora = LoraConfig(rank=2, alpha=4.0, targets=["query", "out"])
  base, adapters = _init(cfg, lora)
  merged = merge(base, adapters, lora)
  for name, n_in in (("query", 1), ("out", 2)):
    w, ad = base["layers"]["attn"][name]["kernel"], adapters["layers"]["attn"][name]
    for layer in range(cfg.num_layers):
      a = np.asarray(ad["lora_a"][layer], np.float64)
      b = np.asarray(ad["lora_b"][layer], np.float64)
      expected = np.asarray(w[layer]) + 2.0 * np.tensordot(a, b, axes=1)
      np.testing.assert_allclose(merged["layers"]["attn"][name]["kernel"][layer], expected,
                                 atol=1e-5)
  untouched = zip(jax.tree.leaves(merged["layers"]["mlp"]), jax.tree.leaves(base["layers"]["mlp"]))
  assert all(x is y for x, y in untouched)  # not targeted: the base's arrays
  mesh = make_mesh((1, 2, 4))
  _, shardings = param_shardings(Adapters(cfg, lora), mesh, seq_len=8)
  query = shardings["layers"]["attn"]["query"]
  assert query["lora_a"].spec == P(None, "fsdp", None)  # [layers, embed, rank]
  assert query["lora_b"].spec == P(None, None, "tensor", None)  # [layers, rank, heads, head_dim]


def test_dropout_zeroes_input_rows_of_the_update():
  cfg = ModelConfig(**NANO)
  lora = LoraConfig(rank=4, dropout=0.5, targets=["mlp_out"])
  base, adapters = _init(cfg, lora)
  full = merge(base, adapters, lora)["layer_0"]["mlp"]["wo"]["kernel"]
  dropped = merge(base, adapters, lora, rng=jax.random.PRNGKey(3))["layer_0"]["mlp"]["wo"]
  w = base["layer_0"]["mlp"]["wo"]["kernel"]
  delta, delta_dropped = np.asarray(full - w), np.asarray(dropped["kernel"] - w)
  kept = np.all(np.isclose(delta_dropped, 2 * delta, atol=1e-6), axis=1)
  zeroed = np.all(np.abs(delta_dropped) < 1e-6, axis=1)
  assert np.all(kept | zeroed) and kept.any() and zeroed.any()


def test_bad_lora_config_is_a_user_error():
  for kwargs in (dict(targets=["qkv"]), dict(rank=0), dict(dropout=1.0)):
    with pytest.raises(UserError):
      LoraConfig(**kwargs)


@pytest.fixture(scope="session")
def lora_run(trained_run, tmp_path_factory):
  """A rank-4 LoRA run of 6 steps on trained_run's weights (held in bf16), checkpoints 3 and 6;
  (run dir, the base's file hashes before it)."""
  before = snapshot(trained_run)
  run = str(tmp_path_factory.mktemp("lora") / "run")
  _train(run, trained_run)
  return run, before


def _train(run, base, *extra):
  with pytest.raises(SystemExit) as exit_info:
    train.main([f"--model_dir={run}", f"--gin.INIT_FROM='{base}'"] + LORA_RUN + list(extra))
  assert exit_info.value.code == 0


def _adapters(run, step=None):
  return read_params(os.path.join(run, "checkpoints"), step)


def test_lora_run_trains_adapters_only_and_never_moves_the_base(lora_run, trained_run):
  run, before = lora_run
  assert snapshot(trained_run) == before  # the base directory: byte-identical
  with open(os.path.join(run, "lora.json")) as f:
    saved = json.load(f)
  assert saved["base"] == os.path.abspath(trained_run) and saved["base_step"] == 40
  # Hand count for the nano model (d=32, 4 heads x 8, mlp 64, 2 layers, GELU): per layer
  # query/key/value/out 4 x (32r + 32r), wi 32r + 64r, wo 64r + 32r -> 448 r.
  r = 4
  assert saved["trainable_params"] == 2 * 448 * r
  # AdamW: two float32 moments per parameter, plus int32 step counts of adam and the schedule.
  assert saved["optimizer_state_bytes"] == 2 * 4 * 2 * 448 * r + 2 * 4
  adapters = _adapters(run)
  leaves = jax.tree_util.tree_leaves_with_path(adapters)
  assert {p[-1].key for p, _ in leaves} == {"lora_a", "lora_b"}  # the checkpoint: adapters
  assert sum(x.size for _, x in leaves) == saved["trainable_params"]
  # lm.load merges: untargeted params are the base's bit for bit, adapted kernels moved.
  base, merged = lm.load(trained_run).params, lm.load(run).params
  flat_base = dict(jax.tree_util.tree_leaves_with_path(base))
  for path, x in jax.tree_util.tree_leaves_with_path(merged):
    same = np.array_equal(np.asarray(x), np.asarray(flat_base[path]))
    adapted = path[-1].key == "kernel" and path[-2].key in ("query", "key", "value", "out",
                                                            "wi", "wo")
    assert same != adapted, path


def test_lora_run_resumes_to_the_same_adapters(lora_run, trained_run, tmp_path, capsys):
  run, _ = lora_run
  copy = str(tmp_path / "run")
  shutil.copytree(run, copy)
  shutil.rmtree(os.path.join(copy, "checkpoints", "6"))
  _train(copy, trained_run)  # resumes at step 3
  for a, b in zip(jax.tree.leaves(_adapters(run, 6)), jax.tree.leaves(_adapters(copy, 6))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  train_fails([f"--model_dir={copy}", f"--gin.INIT_FROM='{trained_run}'"] + LORA_RUN +
         ["--gin.TRAIN_STEPS=6", "--gin.LORA_RANK=8"], capsys, "LoRA run configured otherwise")


def test_merge_lora_writes_a_plain_run_that_loads_and_decodes(lora_run, tmp_path, capsys):
  run, _ = lora_run
  out = str(tmp_path / "merged")
  with pytest.raises(SystemExit) as exit_info:
    convert.main(["merge-lora", "--model_dir", run, "--out_dir", out])
  assert exit_info.value.code == 0
  assert not os.path.exists(os.path.join(out, "lora.json"))
  lora_model, merged = lm.load(run), lm.load(out)
  tokens = np.arange(24).reshape(2, 12) % 60
  np.testing.assert_array_equal(merged.logits(tokens), lora_model.logits(tokens))
  assert merged.generate(["ROMEO:"], max_new_tokens=8) == lora_model.generate(
      ["ROMEO:"], max_new_tokens=8)
  with pytest.raises(SystemExit) as exit_info:
    convert.main(["merge-lora", "--model_dir", out, "--out_dir", str(tmp_path / "again")])
  assert exit_info.value.code == 2 and "not a LoRA run" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "again")


def test_merge_lora_never_writes_around_or_into_its_inputs(lora_run, trained_run, capsys):
  """Issue 19.12: an --out_dir holding the LoRA run, or inside its base, is refused even with
  --overwrite, and nothing is touched."""
  run, _ = lora_run
  before = snapshot(os.path.dirname(run)), snapshot(trained_run)
  for out, message in ((os.path.dirname(run), "contains the input"),
                       (os.path.join(trained_run, "merged"), "is inside the input")):
    with pytest.raises(SystemExit) as exit_info:
      convert.main(["merge-lora", "--model_dir", run, "--out_dir", out, "--overwrite"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
  assert (snapshot(os.path.dirname(run)), snapshot(trained_run)) == before


def test_lora_from_a_pruned_dir_keeps_its_zeros(trained_run, tmp_path):
  """Issue 19.10: adapters on an lm-prune base leave W + delta zero exactly where W is zero,
  in the run's merged params and in merge-lora's directory, and move every other entry."""
  pruned_dir, run, out = (str(tmp_path / d) for d in ("pruned", "run", "merged"))
  with pytest.raises(SystemExit) as exit_info:
    prune_cli.main([f"--model_dir={trained_run}", f"--out_dir={pruned_dir}", "--pattern=2:4"])
  assert exit_info.value.code == 0
  with open(os.path.join(pruned_dir, "model.json")) as f:
    kernels = json.load(f)["pruning"]["kernels"]
  _train(run, pruned_dir, "--gin.TRAIN_STEPS=3", "--gin.LoraConfig.base_dtype=None")
  with pytest.raises(SystemExit) as exit_info:
    convert.main(["merge-lora", "--model_dir", run, "--out_dir", out])
  assert exit_info.value.code == 0
  base = lm.load(pruned_dir).params
  adapted = [n for n in kernels if n.split("/")[-2] in ("query", "key", "value", "out", "wi",
                                                        "wo")]
  assert len(adapted) == 2 * 6  # every pruned kernel of the nano model is a LoRA target
  for params in (lm.load(run).params, lm.load(out).params):
    for name in adapted:
      w = np.asarray(get_path(base, tuple(name.split("/"))))
      now = np.asarray(get_path(params, tuple(name.split("/"))))
      zeros = w == 0
      assert zeros.mean() == 0.5, name
      np.testing.assert_array_equal(now == 0, zeros, err_msg=name)  # same zeros, no others
      assert (now[~zeros] != w[~zeros]).all(), name
