"""flops_per_token against hand counts of two published shapes (Llama 3.2 1B, GPT-2 124M).

Convention (MaxText's calculate_tflops_training_per_device): a matmul [m, k] @ [k, n] costs
2 m k n FLOPs; training costs 3x the forward pass (the backward pass 2x); counted per token are
the q/k/v/o projections, the MLP matmuls, the attention scores (q . k) and the weighted sum of
values over the keys a query attends to (causal: seq_len / 2 on average, MaxText's halving of
the full L^2) and the unembedding over every (padded) vocabulary row. Not counted: embedding
and position lookups, norms, softmax, RoPE, activations, biases, the optimizer.
The counts below are written out by hand, independently of lm/models/config.py.
"""
from lm.models.config import ModelConfig, flops_per_token


def test_llama_3_2_1b_by_hand():
  cfg = ModelConfig(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32,
                    num_kv_heads=8, head_dim=64, mlp_dim=8192, activation="swiglu",
                    norm="rmsnorm", positions="rope")
  seq_len = 2048
  q = 2 * 2048 * (32 * 64)
  k = v = 2 * 2048 * (8 * 64)  # GQA: 8 key/value heads of 64
  o = 2 * (32 * 64) * 2048
  mlp = 3 * (2 * 2048 * 8192)  # SwiGLU: gate, up and down
  scores = 2 * (seq_len / 2) * 32 * 64  # every query head, half the keys (causal)
  values = 2 * (seq_len / 2) * 32 * 64
  layer = q + k + v + o + mlp + scores + values
  logits = 2 * 2048 * 128256
  expected = 3 * (16 * layer + logits)
  assert expected == 7_817_134_080
  assert flops_per_token(cfg, seq_len) == expected


def test_gpt2_124m_by_hand():
  cfg = ModelConfig(vocab_size=50257, vocab_pad_multiple=128, d_model=768, num_layers=12,
                    num_heads=12, mlp_dim=3072, activation="gelu_tanh", use_bias=True,
                    positions="learned", max_len=1024, tie_embeddings=True)
  seq_len = 1024
  qkv = 2 * 768 * (3 * 768)
  o = 2 * 768 * 768
  mlp = 2 * (2 * 768 * 3072)  # up and down
  attention = 2 * (2 * (seq_len / 2) * 12 * 64)  # scores and values, half the keys
  logits = 2 * 768 * 50304  # 50,257 rows padded to 50,304: the padded rows are multiplied too
  expected = 3 * (12 * (qkv + o + mlp + attention) + logits)
  assert expected == 798_031_872
  assert flops_per_token(cfg, seq_len) == expected
