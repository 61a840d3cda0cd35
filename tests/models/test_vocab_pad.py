"""Vocabulary padding: extra embedding rows that are counted, never predicted, never trained."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.models.config import ModelConfig, num_params
from lm.models.transformer import Transformer
from lm.training.step import cross_entropy

SMALL = ModelConfig(vocab_size=66, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=8)


def test_padded_size():
  assert ModelConfig(vocab_size=50257, vocab_pad_multiple=128).padded_vocab_size == 50304
  assert ModelConfig(vocab_size=256, vocab_pad_multiple=128).padded_vocab_size == 256
  assert SMALL.padded_vocab_size == 66


@pytest.mark.slow
@pytest.mark.parametrize("tied", [True, False])
def test_padded_rows_change_nothing_but_the_tables(tied):
  plain = dataclasses.replace(SMALL, tie_embeddings=tied)
  padded = dataclasses.replace(plain, vocab_pad_multiple=8)  # 66 -> 72 rows
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, 66)
  params = nn.meta.unbox(Transformer(padded).init(jax.random.PRNGKey(0), tokens)["params"])
  assert params["embed"]["embedding"].shape == (72, 16)
  leaves = sum(x.size for x in jax.tree.leaves(params))
  assert leaves == num_params(padded) == num_params(plain) + 6 * 16 * (1 if tied else 2)

  # The same weights without the padded rows: the plain model gives the same logits.
  plain_params = jax.tree.map(lambda x: x, params)
  plain_params["embed"] = {"embedding": params["embed"]["embedding"][:66]}
  if not tied:
    plain_params["unembed"] = {"kernel": params["unembed"]["kernel"][:, :66]}
  logits = Transformer(padded).apply({"params": params}, tokens)
  assert logits.shape == (2, 8, 66)  # padded rows are never predicted
  np.testing.assert_array_equal(logits, Transformer(plain).apply({"params": plain_params}, tokens))

  def loss(p):
    logits = Transformer(padded).apply({"params": p}, tokens[:, :-1])
    return cross_entropy(logits, tokens[:, 1:], jnp.ones((2, 7)))[0]

  grads = jax.grad(loss)(params)
  assert not np.any(grads["embed"]["embedding"][66:])  # padded rows never train
  assert np.any(grads["embed"]["embedding"][:66])
  if not tied:
    assert not np.any(grads["unembed"]["kernel"][:, 66:])
