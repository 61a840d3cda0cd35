"""Every ablation switch builds, counts its parameters exactly and trains (the loss falls)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lm.models.config import ModelConfig, flops_per_token, num_params
from lm.models.transformer import Transformer
from lm.training.step import LossConfig, TrainState, train_step

TINY = dict(vocab_size=32, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=32)

# Grouped so that every value of every switch is covered with few compilations.
SWITCHES = {
    "learned_bias_dropout": dict(use_bias=True, dropout_rate=0.1, attention_dropout_rate=0.1),
    "sinusoidal_rms_post_relu_mqa_untied": dict(
        positions="sinusoidal", norm="rmsnorm", norm_position="post", activation="relu",
        num_kv_heads=1, tie_embeddings=False, scaled_residual_init=False),
    "rope_partial_interleaved_parallel_gqa_qknorm": dict(
        positions="rope", rotary_dim=4, rope_layout="interleaved", block="parallel",
        activation="gelu_tanh", num_kv_heads=2, qk_norm=True),
    "rope_llama3_swiglu_window_softcap": dict(
        positions="rope", rope_scaling="llama3", rope_original_max_len=16, activation="swiglu",
        norm="rmsnorm", attention_window=8, attn_logit_softcap=20.0),
    "alibi_geglu_sparse_xla": dict(
        positions="alibi", activation="geglu", sparse_block_size=8, sparse_summary_tokens=2,
        sparse_global_tokens=1, attention_backend="xla"),
    "relative_silu_window_xla": dict(
        positions="relative", relative_buckets=8, relative_max_distance=16, activation="silu",
        attention_window=4, attention_backend="xla"),
    "none_scan_remat": dict(positions="none", scan_layers=True, remat="full"),
}


def _batches(seed=0, batch=8, length=32, vocab=32):
  """Arithmetic sequences mod vocab with a random start and stride: learnable in context."""
  rng = np.random.default_rng(seed)
  while True:
    start = rng.integers(0, vocab, (batch, 1))
    stride = rng.integers(1, 4, (batch, 1))
    seq = (start + stride * np.arange(length + 1)) % vocab
    yield {"inputs": seq[:, :-1].astype(np.int32), "targets": seq[:, 1:].astype(np.int32),
           "weights": np.ones((batch, length), np.float32)}


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_switch_builds_counts_and_trains(name):
  cfg = ModelConfig(**TINY, **SWITCHES[name])
  model = Transformer(cfg)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32), jnp.int32))["params"]
  assert sum(x.size for x in jax.tree.leaves(params)) == num_params(cfg)
  assert flops_per_token(cfg, 32) > 0

  tx = optax.adam(1e-2)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(1))
  step = jax.jit(functools.partial(train_step, model=model, tx=tx, loss_cfg=LossConfig()))
  losses = []
  for _, batch in zip(range(30), _batches()):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:2]), losses


@pytest.mark.parametrize("kwargs, message", [
    (dict(positions="rotary"), "unknown positions"),
    (dict(positions="rope", rotary_dim=3), "rotary_dim"),
    (dict(block="parallel", norm_position="post"), "parallel block is pre-norm"),
    (dict(attention_backend="xla", attn_logit_softcap=30.0), "need attention_backend='jnp'"),
])
def test_bad_switch_combinations_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    ModelConfig(**TINY, **kwargs)


def test_flops_count_only_attended_keys():
  dense = ModelConfig(**TINY)
  assert flops_per_token(ModelConfig(**TINY, attention_window=4), 1024) < flops_per_token(
      dense, 1024)
  assert flops_per_token(ModelConfig(**TINY, attention_window=4096), 1024) == flops_per_token(
      dense, 1024)
