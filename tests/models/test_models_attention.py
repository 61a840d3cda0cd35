"""Attention: both backends agree on every mask type; masks hide exactly what they should."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.models.attention import Attention, LayerInputs, dot_product_attention, make_mask
from lm.models.config import ModelConfig
from lm.models.positions import alibi_bias, alibi_slopes, rope

B, L, H, G, K = 2, 16, 4, 2, 8
POS_BL = jnp.broadcast_to(jnp.arange(L), (B, L))
# Two packed sequences per row: positions restart at the segment boundary.
SEG_BL = jnp.asarray([[1] * 10 + [2] * 6, [1] * 16])
PACKED_POS_BL = jnp.asarray([list(range(10)) + list(range(6)), list(range(16))])

MASKS = {
    "causal": lambda: make_mask(POS_BL, POS_BL),
    "segment": lambda: make_mask(PACKED_POS_BL, PACKED_POS_BL, SEG_BL, SEG_BL),
    "window": lambda: make_mask(POS_BL, POS_BL, window=3),
    "sparse": lambda: make_mask(POS_BL, POS_BL, sparse_block=4, sparse_summary=1,
                                sparse_global=1),
    "window_segment": lambda: make_mask(PACKED_POS_BL, PACKED_POS_BL, SEG_BL, SEG_BL, window=4),
}


@pytest.mark.parametrize("mask_name", sorted(MASKS))
@pytest.mark.parametrize("with_bias", [False, True])
def test_backends_agree(mask_name, with_bias):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(kq, (B, L, H, K))
  k = jax.random.normal(kk, (B, L, G, K))
  v = jax.random.normal(kv, (B, L, G, K))
  bias = alibi_bias(POS_BL, POS_BL, H) if with_bias else None
  mask = MASKS[mask_name]()
  ref, xla = _both_backends(q, k, v, mask, bias)
  np.testing.assert_allclose(ref, xla, atol=1e-5)


@jax.jit
def _both_backends(q, k, v, mask, bias):
  return (dot_product_attention(q, k, v, mask, "jnp", bias_BHLS=bias),
          dot_product_attention(q, k, v, mask, "xla", bias_BHLS=bias))


def _visible(i, j, window=None, block=None, summary=0, global_tokens=0):
  """The intended patterns, written independently of make_mask."""
  if j > i or (window is not None and i - j >= window):
    return False
  if block is not None:
    return i // block == j // block or j % block >= block - summary or j < global_tokens
  return True


@pytest.mark.parametrize("backend", ["jnp", "xla"])
@pytest.mark.parametrize("switches, pattern", [
    (dict(attention_window=3), dict(window=3)),
    (dict(sparse_block_size=4, sparse_summary_tokens=1, sparse_global_tokens=1),
     dict(block=4, summary=1, global_tokens=1)),
])
def test_hidden_positions_get_exactly_zero_gradient(backend, switches, pattern):
  cfg = ModelConfig(d_model=16, num_heads=2, num_layers=1, positions="rope",
                    attention_backend=backend, **switches)
  attn = Attention(cfg)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, L, 16))
  pos = POS_BL[:1]
  params = attn.init(jax.random.PRNGKey(1), x, LayerInputs(pos))

  def out_L(x):  # each query position's output, summed over features
    return jnp.sum(attn.apply(params, x, LayerInputs(pos))[0], axis=-1)

  grad_LL = np.abs(np.asarray(jax.jit(jax.jacrev(out_L))(x))[:, 0]).sum(-1)  # [i, j]
  for i in range(L):
    for j in range(L):
      if _visible(i, j, **pattern):
        assert grad_LL[i, j] > 0, (i, j)
      else:
        assert grad_LL[i, j] == 0.0, (i, j)


def test_rope_layouts_are_a_permutation_of_each_other():
  """interleaved(x) == unpermute(half(permute(x))): the permutation HF's Llama converter applies
  to Meta's weights. Dims (0, 1, 2, 3, ...) in pairs become (0, 2, ...| 1, 3, ...)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (B, L, H, K))
  inv_freq = np.asarray([1.0, 0.1, 0.01, 0.001], np.float32)
  perm = np.concatenate([np.arange(0, K, 2), np.arange(1, K, 2)])
  half = rope(x[..., perm], POS_BL, inv_freq, "half")
  inter = rope(x, POS_BL, inv_freq, "interleaved")
  np.testing.assert_allclose(inter[..., perm], half, atol=1e-6)


def test_partial_rotary_leaves_the_rest_untouched():
  x = jax.random.normal(jax.random.PRNGKey(0), (B, L, H, K))
  out = rope(x, POS_BL, np.asarray([1.0, 0.1], np.float32), "half")
  np.testing.assert_array_equal(out[..., 4:], x[..., 4:])
  assert not np.allclose(out[..., :4], x[..., :4])


def test_alibi_slopes():
  np.testing.assert_allclose(alibi_slopes(8), 2.0 ** -np.arange(1, 9))
  assert alibi_slopes(6).shape == (6,)


class _Recorder:
  """Stands in for jax.nn.dot_product_attention: records each call's keywords, then runs the
  real function (or raises for implementation='cudnn' when refuse_cudnn, as cuDNN does for
  shapes it cannot run)."""

  def __init__(self, refuse_cudnn=False):
    self.calls, self.refuse_cudnn, self.real = [], refuse_cudnn, jax.nn.dot_product_attention

  def __call__(self, *args, **kwargs):
    self.calls.append(kwargs)
    if kwargs.get("implementation") == "cudnn" and self.refuse_cudnn:
      raise ValueError("cuDNN does not support this")
    return self.real(*args, **kwargs)


@pytest.mark.parametrize("switches, packed, expect", [
    ({}, False, dict(is_causal=True, mask=False, local_window_size=None)),
    (dict(attention_window=3), False, dict(is_causal=True, mask=False, local_window_size=(2, 0))),
    ({}, True, dict(is_causal=False, mask=True, local_window_size=None)),
    (dict(sparse_block_size=4), False, dict(is_causal=False, mask=True, local_window_size=None)),
])
def test_xla_backend_passes_plain_causal_masks_as_is_causal(monkeypatch, switches, packed,
                                                            expect):
  """Issue 8 item 8: the mask array is passed only when it is more than (local) causal."""
  from lm.models.transformer import Transformer
  recorder = _Recorder()
  monkeypatch.setattr(jax.nn, "dot_product_attention", recorder)
  cfg = ModelConfig(vocab_size=32, d_model=16, num_heads=4, num_kv_heads=2, num_layers=1,
                    mlp_dim=32, positions="rope", attention_backend="xla", **switches)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (B, L), 0, 32)
  args = (tokens, PACKED_POS_BL, SEG_BL) if packed else (tokens,)
  params = jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(1), tokens)
  xla = jax.jit(Transformer(cfg).apply)(params, *args)
  call = recorder.calls[-1]
  assert call["is_causal"] == expect["is_causal"]
  assert (call["mask"] is not None) == expect["mask"]
  assert call["local_window_size"] == expect["local_window_size"]
  assert call["implementation"] is None  # CPU: XLA's attention
  ref = jax.jit(Transformer(dataclasses.replace(cfg, attention_backend="jnp")).apply)(params,
                                                                                     *args)
  np.testing.assert_allclose(xla, ref, atol=2e-5)


@pytest.mark.parametrize("refuse", [False, True])
def test_xla_backend_asks_for_cudnn_on_gpu_and_falls_back(monkeypatch, refuse):
  recorder = _Recorder(refuse_cudnn=refuse)
  monkeypatch.setattr(jax.nn, "dot_product_attention", recorder)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(kq, (B, L, H, K), jnp.bfloat16)
  k = jax.random.normal(kk, (B, L, G, K), jnp.bfloat16)
  v = jax.random.normal(kv, (B, L, G, K), jnp.bfloat16)
  mask = MASKS["causal"]()
  if not refuse:  # no cuDNN on this machine: only check what would be asked for
    monkeypatch.setattr(recorder, "real", lambda *a, **kw: jnp.zeros_like(q))
  out = dot_product_attention(q, k, v, mask, "xla", causal=True)
  assert [c["implementation"] for c in recorder.calls] == (["cudnn", None] if refuse
                                                           else ["cudnn"])
  assert all(c["is_causal"] for c in recorder.calls)
  if refuse:
    ref = dot_product_attention(q, k, v, mask, "jnp")
    np.testing.assert_allclose(out.astype(np.float32), ref.astype(np.float32), atol=3e-2)
  # float32 activations never ask for cuDNN (its fused kernel is bf16/fp16 only).
  recorder.calls.clear()
  dot_product_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                        mask, "xla", causal=True)
  assert [c["implementation"] for c in recorder.calls] == [None]


def test_prefix_mask_shares_a_context_with_each_continuation():
  # One row: context (segment 1, positions 0-2), continuations A (segment 2) and B (segment 3)
  # both positioned after it (3, 4 / 3), then padding (segment 0).
  seg = jnp.asarray([[1, 1, 1, 2, 2, 3, 0]])
  prefix = jnp.asarray([[1, 1, 1, 1, 1, 1, 0]])
  pos = jnp.asarray([[0, 1, 2, 3, 4, 3, 0]])
  mask = np.asarray(make_mask(pos, pos, seg, seg, q_prefix_BL=prefix))[0, 0]
  expected = np.array([[1, 0, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0, 0],   # A sees the context and itself
                       [1, 1, 1, 1, 1, 0, 0],
                       [1, 1, 1, 0, 0, 1, 0],   # B: the context and itself, never A
                       [0, 0, 0, 0, 0, 0, 1]], bool)
  np.testing.assert_array_equal(mask, expected)


def test_decode_keys_are_the_filled_cache_slots_up_to_the_query():
  """A decode step's queries attend over cache slots, not over the call's own tokens: a slot is
  visible when it holds a token (position >= 0) at or before the query's position (and within
  the window); the keys' positions are the slots' (for position biases)."""
  slots_BS = jnp.asarray([[6, 7, 2, 3, 4, 5, -1, -1], [0, 1, 2, -1, -1, -1, -1, -1]])
  inputs = LayerInputs(positions_BL=jnp.asarray([[7], [2]]), cache_pos_BS=slots_BS,
                       cache_index=jnp.asarray(8))
  for window in (None, 3):
    mask, k_pos_BS = inputs.keys(ModelConfig(attention_window=window), decode=True)
    expected = np.array([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]], bool)
    if window == 3:  # query 7 sees 5, 6, 7; query 2 sees 0, 1, 2
      expected[0] = [1, 1, 0, 0, 0, 1, 0, 0]
    np.testing.assert_array_equal(np.asarray(mask)[:, 0, 0], expected)
    np.testing.assert_array_equal(k_pos_BS, slots_BS)
  # Without decode the same inputs describe the call's own tokens (here one per row).
  mask, k_pos_BS = inputs.keys(ModelConfig(), decode=False)
  assert mask.shape == (2, 1, 1, 1) and bool(mask.all())
  np.testing.assert_array_equal(k_pos_BS, inputs.positions_BL)
