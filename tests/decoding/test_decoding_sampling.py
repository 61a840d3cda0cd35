"""Sampling: filtered frequencies match softmax(logits / T) (chi-square), degenerate filters
are greedy, settings follow HF / OpenAI (top_k 0 is no filter, out-of-range values are one
UserError), and tokens depend on (seed, prompt position, sample, step) only, not on the rest of
the batch, in the cached decoder and the cache-less sampler (lm.decoding.windowed) alike."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lm.decoding import windowed as cacheless
from lm.decoding import generate_ids, row_keys, sample
from lm.decoding.stream import stream_ids
from lm.errors import UserError
from lm.models.config import ModelConfig
from lm.models.transformer import Transformer
from lm.sharding import make_mesh, param_shardings
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
  keys = row_keys(jax.random.PRNGKey(0), jnp.arange(DRAWS), jnp.zeros(DRAWS, jnp.int32), 0)
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


def test_keys_depend_on_seed_position_sample_and_step_only():
  key = jax.random.PRNGKey(3)
  keys = lambda key, positions, samples, step: row_keys(key, jnp.asarray(positions),
                                                        jnp.asarray(samples), step)
  a = keys(key, [0, 0, 1, 0], [0, 1, 0, 0], 5)
  np.testing.assert_array_equal(a[0], a[3])  # same (seed, position, sample, step), any row
  for other in (a[1], a[2], keys(key, [0], [0], 6)[0], keys(jax.random.PRNGKey(4), [0], [0], 5)[0],
                keys(key, [1], [0], 5)[0]):
    assert not np.array_equal(a[0], other)
  assert not np.array_equal(keys(key, [0], [1], 5)[0], keys(key, [1], [0], 5)[0])


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


def test_samples_depend_on_the_position_not_on_the_rest_of_the_batch(tiny):
  """Issue 19 item 7: a prompt at position i samples the same tokens alone (i = 0) or with any
  other prompts around it."""
  model, params = tiny
  kwargs = SAMPLED
  batch = generate_ids(model, params, PROMPTS, **kwargs)
  assert generate_ids(model, params, PROMPTS[:1], **kwargs)[0] == batch[0]  # alone
  others = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [7], PROMPTS[2]]
  assert generate_ids(model, params, others, **kwargs)[2] == batch[2]  # other neighbours
  assert generate_ids(model, params, PROMPTS, **kwargs) == batch  # reproducible
  assert len({tuple(s) for s in batch[2]}) > 1  # the samples of a prompt differ
  assert generate_ids(model, params, PROMPTS, **{**kwargs, "seed": 12}) != batch


def test_repeated_prompts_get_different_samples(tiny):
  """Issue 19 item 7: ["x"] * 3 at temperature 1 used to give 3 equal samples."""
  model, params = tiny
  same = generate_ids(model, params, [PROMPTS[2]] * 3, **SAMPLED)  # 3 positions x 3 samples
  assert len({tuple(r) for rows in same for r in rows}) == 9
  assert same[2] == generate_ids(model, params, PROMPTS, **SAMPLED)[2]  # same position


def test_top_k_zero_is_no_filter(tiny):
  """Issue 19 item 6: top_k=0 meant greedy (k clipped to 1); HF / OpenAI read it as off."""
  model, params = tiny
  kwargs = dict(max_new_tokens=8, temperature=1.5, seed=11)
  unfiltered = generate_ids(model, params, PROMPTS, **kwargs)
  assert generate_ids(model, params, PROMPTS, top_k=0, **kwargs) == unfiltered
  assert unfiltered != generate_ids(model, params, PROMPTS, max_new_tokens=8)  # not greedy


BAD_SETTINGS = [
    (dict(top_k=-3), r"top_k=-3 must be an integer >= 0"),
    (dict(top_k=2.5), r"top_k=2.5 must be an integer"),
    (dict(top_p=1.5), r"top_p=1.5 must be in \[0, 1\]"),
    (dict(top_p=-0.1), r"top_p=-0.1 must be in \[0, 1\]"),
    (dict(min_p=2.0), r"min_p=2.0 must be in \[0, 1\]"),
    (dict(temperature=-1.0), r"temperature=-1.0 must be a finite number >= 0"),
    (dict(temperature=float("nan")), r"temperature=nan"),
    (dict(temperature=0.0, top_p=1.5, top_k=-1), r"^top_k=-1 .*; top_p=1.5 "),  # one error
]


@pytest.mark.parametrize("bad, message", BAD_SETTINGS, ids=lambda x: str(x)[:30])
def test_out_of_range_settings_are_one_user_error(tiny, bad, message):
  """Issue 19 item 6, in every decoder that takes the settings (lm.api and lm-sample go
  through generate_ids / stream_ids; lm-train's sample through lm.decoding.windowed)."""
  model, params = tiny
  settings = {"temperature": 1.0, **bad}
  with pytest.raises(UserError, match=message):
    generate_ids(model, params, PROMPTS, max_new_tokens=4, **settings)
  with pytest.raises(UserError, match=message):
    next(stream_ids(model, params, PROMPTS, max_new_tokens=4, **settings))
  with pytest.raises(UserError, match=message):
    cacheless.generate(model, params, np.asarray([PROMPTS[0]]), jax.random.PRNGKey(0),
                       num_steps=4, **settings)


def test_the_cacheless_sampler_draws_as_the_cached_decoder(tiny):
  """lm.decoding.windowed (lm-train's sample) follows the same rule: row b is position b, sample 0,
  keys from PRNGKey(seed), so it draws the tokens generate_ids draws (repeated prompts differ)."""
  model, params = tiny
  prompts = [PROMPTS[0], PROMPTS[0], [9, 2, 6, 5, 3]]  # equal lengths: windowed pads none
  settings = dict(temperature=1.5, top_k=0, top_p=0.9)
  cached = generate_ids(model, params, prompts, max_new_tokens=6, seed=11, **settings)
  tokens = cacheless.generate(model, params, np.asarray(prompts), jax.random.PRNGKey(11),
                              num_steps=6, window=16, **settings)
  assert np.asarray(tokens)[:, 5:].tolist() == cached
  assert cached[0] != cached[1]
