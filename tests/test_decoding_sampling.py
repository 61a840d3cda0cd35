"""Sampling: filtered frequencies match softmax(logits / T) (chi-square), degenerate filters
are greedy, and tokens depend on (seed, sample, step) only, not on the batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lm.decoding import generate_ids, row_keys, sample
from lm.models.config import ModelConfig
from lm.models.transformer import Transformer
from lm.sharding import make_mesh
from lm.training.state import param_shardings
from test_decoding import _params

LOGITS_V = np.asarray([2.0, 1.6, 1.1, 0.9, 0.5, 0.2, -0.1, -0.5, -1.0, -2.0], np.float32)
DRAWS = 40_000


def _reference_probs(logits, temperature, top_k=None, top_p=None, min_p=None):
  """The filters as documented, one token at a time in order of likelihood."""
  z = logits.astype(np.float64) / temperature
  p = np.exp(z - z.max())
  p /= p.sum()
  order = np.argsort(-p)
  keep = np.zeros(len(p), bool)
  keep[order[:top_k or len(p)]] = True
  if top_p is not None:
    q, mass = p * keep / (p * keep).sum(), 0.0
    for i in order:
      if keep[i] and mass >= top_p:
        keep[i] = False
      mass += q[i]
  if min_p is not None:
    keep &= p >= min_p * p[keep].max()
  return np.where(keep, p, 0) / p[keep].sum()


@jax.jit
def _draw(keys, temperature, top_k, top_p, min_p):
  logits_BV = jnp.broadcast_to(LOGITS_V, (keys.shape[0], LOGITS_V.size))
  return sample(logits_BV, keys, temperature, top_k, top_p, min_p)


# Filters that are off take their no-op value (k = V, p = 1, min_p = 0): one compilation.
@pytest.mark.parametrize("settings", [
    dict(temperature=0.7),
    dict(temperature=1.3, top_k=4),
    dict(temperature=1.0, top_p=0.6),
    dict(temperature=1.0, min_p=0.2),
    dict(temperature=0.9, top_k=7, top_p=0.9, min_p=0.08),
], ids=lambda s: "_".join(f"{k}={v}" for k, v in s.items()))
def test_sampled_frequencies_match_the_filtered_softmax(settings):
  keys = row_keys(0, jnp.arange(DRAWS), 0)
  tokens = np.asarray(_draw(keys, settings["temperature"], settings.get("top_k", LOGITS_V.size),
                            settings.get("top_p", 1.0), settings.get("min_p", 0.0)))
  counts = np.bincount(tokens, minlength=LOGITS_V.size)
  expected = _reference_probs(LOGITS_V, **settings)
  support = expected > 0
  assert counts[~support].sum() == 0  # filtered-out tokens never come
  assert support.sum() < LOGITS_V.size or len(settings) == 1
  assert _chi2_pvalue(counts[support], expected[support]) > 1e-3
  # Enough draws to tell: the unfiltered, untempered softmax is rejected.
  assert _chi2_pvalue(counts, _reference_probs(LOGITS_V, 1.0)) < 1e-6


def _chi2_pvalue(counts, probs):
  return stats.chisquare(counts, probs / probs.sum() * counts.sum()).pvalue


def test_keys_depend_on_seed_sample_and_step_only():
  a = row_keys(3, jnp.asarray([0, 1, 0]), 5)
  np.testing.assert_array_equal(a[0], a[2])  # same (seed, sample, step), whatever the row
  assert not np.array_equal(a[0], a[1])
  assert not np.array_equal(a[0], row_keys(3, jnp.asarray([0]), 6)[0])
  assert not np.array_equal(a[0], row_keys(4, jnp.asarray([0]), 5)[0])


@pytest.fixture(scope="module")
def tiny():
  cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    mlp_dim=48, positions="rope")
  model = Transformer(cfg)
  return model, _params(model, seed=1)


PROMPTS = [[3, 1, 4, 1, 5], [9, 2], [6, 5, 3, 5, 8, 9, 7, 9, 3]]


def test_degenerate_filters_are_greedy(tiny):
  model, params = tiny
  greedy = generate_ids(model, params, PROMPTS, max_new_tokens=8)
  v = model.cfg.vocab_size  # the other filters at their no-op values: one compilation
  for filters in [dict(top_k=1, top_p=1.0, min_p=0.0), dict(top_k=v, top_p=1e-6, min_p=0.0),
                  dict(top_k=v, top_p=1.0, min_p=1.0)]:
    assert generate_ids(model, params, PROMPTS, max_new_tokens=8, temperature=1.0, seed=5,
                        **filters) == greedy, filters


SAMPLED = dict(max_new_tokens=8, temperature=1.5, top_k=20, num_samples=3, seed=11)


def test_samples_do_not_depend_on_the_batch(tiny):
  model, params = tiny
  kwargs = SAMPLED
  alone = generate_ids(model, params, PROMPTS[2:], **kwargs)
  batch = generate_ids(model, params, PROMPTS, **kwargs)
  assert batch[2] == alone[0]
  assert generate_ids(model, params, PROMPTS, **kwargs) == batch  # reproducible
  assert len({tuple(s) for s in batch[2]}) > 1  # the samples of a prompt differ
  assert generate_ids(model, params, PROMPTS, **{**kwargs, "seed": 12}) != batch


def test_eos_and_max_new_tokens_end_rows(tiny):
  model, params = tiny
  greedy = generate_ids(model, params, PROMPTS, max_new_tokens=8)
  assert [len(r) for r in generate_ids(model, params, PROMPTS, max_new_tokens=5)] == [5, 5, 5]
  eos = greedy[0][2]
  stopped = generate_ids(model, params, PROMPTS, max_new_tokens=8, eos_ids=[eos, 63])
  for full, row in zip(greedy, stopped):
    end = full.index(eos) + 1 if eos in full else len(full)
    assert row == full[:end]  # up to and including the first EOS
  assert len(stopped[0]) == greedy[0].index(eos) + 1 <= 3


def test_sharded_params_decode_the_same_tokens(tiny):
  model, params = tiny
  kwargs = SAMPLED  # 9 rows on a batch of 16 split 4 ways; kv_heads 2 over tensor 2
  mesh = make_mesh((4, 1, 2))
  _, shardings = param_shardings(model, mesh, seq_len=1)
  sharded = jax.device_put(params, shardings)
  assert generate_ids(model, sharded, PROMPTS, mesh=mesh, **kwargs) == generate_ids(
      model, params, PROMPTS, **kwargs)
