"""Decoder invariants: parameter/FLOP formulas, causality, packed == separate sequences."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.models.config import ModelConfig, flops_per_token, num_params
from lm.models.transformer import Transformer
from train_utils import NANO


@pytest.fixture(scope="module")
def nano():
  model = Transformer(NANO)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  return model, jax.tree.map(lambda x: getattr(x, "value", x), params,
                             is_leaf=lambda x: hasattr(x, "value"))


def test_published_gpt2_and_llama_counts():
  gpt2 = ModelConfig(vocab_size=50257, d_model=768, num_layers=12, num_heads=12, mlp_dim=3072,
                     activation="gelu_tanh", use_bias=True, max_len=1024)
  assert num_params(gpt2) == 124_439_808
  llama = ModelConfig(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32,
                      num_kv_heads=8, head_dim=64, mlp_dim=8192, activation="swiglu",
                      norm="rmsnorm", positions="rope")
  assert num_params(llama) == 1_235_814_400


def test_flops_per_token_by_hand():
  cfg = ModelConfig(vocab_size=10, d_model=4, num_layers=1, num_heads=2, mlp_dim=8)
  mlp, attn_proj = 2 * 4 * 8 * 2, 2 * 4 * 3 * 4 + 2 * 4 * 4
  attention = 4 * 16 * 2 * 2 / 2
  assert flops_per_token(cfg, 16) == 3 * (mlp + attn_proj + attention + 2 * 4 * 10)


def test_future_tokens_do_not_change_past_logits(nano):
  model, params = nano
  tokens = jnp.array([[5, 9, 13, 22, 30, 41, 7, 8]])
  changed = tokens.at[0, 5:].set(3)
  a = model.apply({"params": params}, tokens)
  b = model.apply({"params": params}, changed)
  np.testing.assert_allclose(a[0, :5], b[0, :5], atol=1e-6)
  assert not np.allclose(a[0, 5:], b[0, 5:])


def test_packed_row_equals_sequences_run_alone(nano):
  model, params = nano
  first, second = jnp.array([[5, 9, 13]]), jnp.array([[22, 30, 41, 7, 8]])
  packed = jnp.concatenate([first, second], axis=1)
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2]])
  positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 4]])
  out = model.apply({"params": params}, packed, positions, segments)
  np.testing.assert_allclose(out[:, :3], model.apply({"params": params}, first), atol=1e-5)
  np.testing.assert_allclose(out[:, 3:], model.apply({"params": params}, second), atol=1e-5)


def test_exact_gelu_and_its_gradient_match_autodiff():
  from lm.models.layers import gelu_exact
  x = jnp.linspace(-6, 6, 101)
  reference = lambda v: jax.nn.gelu(v, approximate=False)
  np.testing.assert_allclose(gelu_exact(x), reference(x), atol=1e-6)
  np.testing.assert_allclose(jax.vmap(jax.grad(gelu_exact))(x), jax.vmap(jax.grad(reference))(x),
                             atol=1e-6)
