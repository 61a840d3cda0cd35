"""KV-cache decoding equals uncached decoding, for every zoo family and every switch.

Reference: greedy tokens from repeated full forward passes without a cache, each prompt on its
own (right-padded to a fixed length, which a causal model ignores). Models are shrunk (2
layers, d=32, vocab 64, fp32) with large random weights so that logits are far from ties.
"""
import dataclasses
import glob
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from lm.cli.common import parse_gin
from lm.decoding import bucket, cache_length, generate_ids, prefill, prepare, round_rows
from lm.decoding.cache import cache_bytes
from lm.errors import UserError
from lm.models.config import ModelConfig
from lm.models.transformer import Transformer

PROMPTS = [[5, 9, 13], [22, 30, 41, 7, 8, 1, 2], [17]]  # ragged: lengths 3, 7, 1
NEW = 8
BASE = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, mlp_dim=48, max_len=64)


def _shrink(cfg: ModelConfig) -> ModelConfig:
  """The same architecture at test size (fp32: the comparison is token for token)."""
  kv = cfg.kv_heads
  return dataclasses.replace(
      cfg, **BASE, num_kv_heads=None if kv == cfg.num_heads else (1 if kv == 1 else 2),
      head_dim=None if cfg.head_dim is None else 8,
      rotary_dim=None if cfg.rotary_dim is None else 4, dtype="float32", param_dtype="float32",
      dropout_rate=0.0, attention_dropout_rate=0.0)


def _family_configs():
  """One shrunk config per distinct architecture among gin_configs/models/*.gin."""
  configs = {}
  for path in sorted(glob.glob(os.path.join(REPO, "gin_configs", "models", "*.gin"))):
    gin.clear_config()
    parse_gin([path], [])
    cfg = _shrink(ModelConfig())
    gin.clear_config()
    configs.setdefault(cfg, os.path.basename(path)[:-4])
  return {name: cfg for cfg, name in configs.items()}


# Every position type and attention switch the families above leave out, grouped.
SWITCHES = {
    "sinusoidal_post_mqa_ring": dict(positions="sinusoidal", norm_position="post",
                                     norm="rmsnorm", num_kv_heads=1, attention_window=4),
    "alibi_sparse_gqa_xla": dict(positions="alibi", sparse_block_size=4,
                                 sparse_summary_tokens=1, sparse_global_tokens=1,
                                 num_kv_heads=2, attention_backend="xla"),
    "relative_ring_scan_qknorm_softcap": dict(positions="relative", relative_buckets=8,
                                              relative_max_distance=16, attention_window=5,
                                              scan_layers=True, qk_norm=True,
                                              attn_logit_softcap=5.0),
    "none_parallel_sparse_scan": dict(positions="none", block="parallel", sparse_block_size=4,
                                      scan_layers=True),
    "rope_ring_scan_xla_gqa": dict(positions="rope", attention_window=3, scan_layers=True,
                                   attention_backend="xla", num_kv_heads=2),
}
CONFIGS = {**_family_configs(), **{k: ModelConfig(**BASE, **v) for k, v in SWITCHES.items()}}


def _params(model, seed=0):
  """Random params of the model's shapes (drawn with numpy: no init to compile); norm scales
  near 1, everything else N(0, 0.3^2) so that logits are far from ties."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  rng = np.random.default_rng(seed)

  def draw(path, x):
    x = getattr(x, "value", x)
    noise = rng.normal(0, 0.3, x.shape).astype(np.float32)
    return 1 + noise / 3 if path[-1].key == "scale" else noise

  return jax.tree_util.tree_map_with_path(draw, shapes["params"],
                                          is_leaf=lambda x: hasattr(x, "value"))


def _uncached_greedy(model, params, prompts, new):
  """Argmax of full forward passes over each prompt + what was chosen so far."""
  forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
  seqs = [list(p) for p in prompts]
  width = max(map(len, prompts)) + new
  for _ in range(new):
    tokens = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
      tokens[i, :len(s)] = s
    logits = np.asarray(forward(params, tokens))
    for i, s in enumerate(seqs):
      s.append(int(np.argmax(logits[i, len(s) - 1])))
  return [s[len(p):] for s, p in zip(seqs, prompts)]


def test_every_zoo_family_and_switch_is_covered():
  assert {"gpt2_124m", "llama3_2_1b", "llama3_1_8b", "neox_small", "gptj_small",
          "nano"} <= set(CONFIGS)
  seen = lambda field: {getattr(c, field) for c in CONFIGS.values()}
  assert seen("positions") == {"learned", "sinusoidal", "rope", "alibi", "relative", "none"}
  assert seen("rope_layout") == {"half", "interleaved"}
  assert seen("rope_scaling") == {"none", "llama3"}
  assert seen("block") == {"sequential", "parallel"}
  assert seen("norm_position") == {"pre", "post"}
  assert seen("scan_layers") == {True, False}
  assert seen("attention_backend") == {"jnp", "xla"}
  assert seen("kv_heads") == {1, 2, 4}
  assert {c.rotary_dim for c in CONFIGS.values()} >= {None, 4}
  assert None in seen("attention_window") and len(seen("attention_window")) > 1
  assert None in seen("sparse_block_size") and len(seen("sparse_block_size")) > 1


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_greedy_equals_uncached_argmax(name):
  model = Transformer(CONFIGS[name])
  params = _params(model)
  got = generate_ids(model, params, PROMPTS, max_new_tokens=NEW)
  assert got == _uncached_greedy(model, params, PROMPTS, NEW)


@pytest.mark.parametrize("name", ["rope_ring_scan_xla_gqa", "alibi_sparse_gqa_xla"])
def test_each_row_of_a_ragged_batch_equals_the_prompt_alone(name):
  model = Transformer(CONFIGS[name])
  params = _params(model)
  batch = generate_ids(model, params, PROMPTS, max_new_tokens=NEW)
  for prompt, row in zip(PROMPTS, batch):
    assert generate_ids(model, params, [prompt], max_new_tokens=NEW) == [row]


def test_sliding_window_cache_is_a_ring_of_window_slots():
  cfg = CONFIGS["rope_ring_scan_xla_gqa"]  # window 3; the equality test decodes 15 > 3 tokens
  model = Transformer(cfg)
  params = _params(model)
  assert max(map(len, PROMPTS)) + NEW > 4 * cfg.attention_window
  slots = cache_length(cfg, 4096)
  assert slots == cfg.attention_window
  _, cache = prefill(model, params, np.ones((4, 8), np.int32),
                     np.asarray([8, 5, 1, 1], np.int32), cache_len=slots)
  assert cache.k.shape == (cfg.num_layers, 4, 3, 2, cfg.dim_per_head)
  assert cache_bytes(cache) == 2 * cfg.num_layers * 4 * 3 * 2 * cfg.dim_per_head * 4
  # Columns 5, 6, 7 land in slots 2, 0, 1 (column % 3) with their positions; a row padded by
  # 3 has positions 2, 3, 4 there, a one-token row only position 0 (padding: -1).
  np.testing.assert_array_equal(cache.pos_BS[:3], [[6, 7, 5], [3, 4, 2], [-1, 0, -1]])
  np.testing.assert_array_equal(cache.next_pos_B, [8, 5, 1, 1])


def test_padded_sizes_are_powers_of_two_split_over_the_data_axes():
  assert [bucket(n) for n in (0, 1, 2, 3, 5, 8, 9)] == [1, 1, 2, 4, 8, 8, 16]
  assert bucket(5, 16) == 16 and bucket(40, 16) == 64
  assert [round_rows(n, 8) for n in (1, 3, 8, 9)] == [8, 8, 8, 16]
  assert round_rows(5, 6) == 12 and round_rows(3) == 4


def test_one_request_path_gives_each_row_its_prompt_and_sample():
  """generate_ids, stream_ids and beam_search_ids share `prepare`: row r is sample r % n of
  prompt r // n, padded to a multiple of the data-parallel size; each row's logits are its
  prompt's alone (a full forward pass)."""
  model = Transformer(ModelConfig(**BASE, dtype="float32", param_dtype="float32"))
  params = _params(model)
  p = prepare(model, params, PROMPTS, max_new_tokens=5, num_samples=2, batch_multiple=4)
  assert (p.rows, p.num_steps) == (6, 8)
  assert p.prompt_of_row_B.tolist() == [0, 0, 1, 1, 2, 2, 0, 0]
  assert p.sample_index_B.tolist() == [0, 1, 0, 1, 0, 1, 0, 0]
  assert p.padding_B().tolist() == [False] * 6 + [True] * 2
  for r in range(p.rows):
    prompt = PROMPTS[r // 2]
    alone = model.apply({"params": params}, np.asarray([prompt], np.int32))[0, -1]
    np.testing.assert_allclose(p.logits_BV[r], alone, atol=1e-4)
  assert prepare(model, params, PROMPTS, max_new_tokens=0) is None
  assert prepare(model, params, [], max_new_tokens=4) is None
  with pytest.raises(UserError, match="prompt 1 is empty"):
    prepare(model, params, [[1], []], max_new_tokens=4)
