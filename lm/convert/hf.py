"""HF transformers <-> lm: configs and weights of the GPT-2 and Llama families.

Weights are numpy arrays in lm's unscanned layout (layer_0, layer_1, ...); lm.models.scanned.stack_layers
turns them into the scan_layers layout. HF Linear weights are [out, in] and GPT-2's Conv1D
weights are [in, out]; lm kernels are [in..., out...] (e.g. query: [embed, heads, head_dim]).

RoPE layout: HF Llama checkpoints already use the rotate-half layout (HF's
convert_llama_weights_to_hf permuted the rows of Meta's q/k projections, whose RoPE rotates
interleaved pairs), and lm's rope_layout='half' is the same rotation, so q_proj / k_proj are
copied as they are. Meta's original consolidated.*.pth checkpoints would need
rope_layout='interleaved' instead (or that permutation; tests/models/test_models_attention.py shows
the two layouts are the same rotation up to it).
"""
import dataclasses

import numpy as np

from lm.errors import UserError
from lm.models.config import ModelConfig

_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                     "gelu_fast": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def family(cfg: ModelConfig) -> str:
  """'gpt2' or 'llama' if `cfg` is exactly expressible in that HF architecture, else an error."""
  plain = dict(norm_position="pre", block="sequential", qk_norm=False, attention_window=None,
               sparse_block_size=None, attn_logit_softcap=None)
  differs = [k for k, v in plain.items() if getattr(cfg, k) != v]
  gpt2 = (cfg.positions == "learned" and cfg.norm == "layernorm" and cfg.use_bias
          and cfg.tie_embeddings and cfg.kv_heads == cfg.num_heads
          and cfg.dim_per_head * cfg.num_heads == cfg.d_model
          and cfg.activation in ("gelu_tanh", "gelu", "relu"))
  llama = (cfg.positions == "rope" and cfg.norm == "rmsnorm" and not cfg.use_bias
           and cfg.activation == "swiglu" and cfg.rope_layout == "half"
           and cfg.rotary_dims == cfg.dim_per_head)
  if not differs and (gpt2 or llama):
    return "gpt2" if gpt2 else "llama"
  raise UserError("only GPT-2-like (learned positions, LayerNorm with bias, tied, MHA) and "
                  "Llama-like (RoPE rotate-half, RMSNorm, SwiGLU, no biases) pre-norm "
                  f"sequential models export to HF; this model has {dataclasses.asdict(cfg)}")


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
  """ModelConfig of an HF config.json (dict); unsupported variants are refused."""
  kind = hf.get("model_type")
  if kind == "gpt2":
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
      raise UserError("GPT-2 variants without 1/sqrt(head_dim) attention scaling are unsupported")
    act = hf.get("activation_function", "gelu_new")
    if act not in _GPT2_ACTIVATIONS:
      raise UserError(f"unsupported GPT-2 activation_function {act!r}")
    d = hf["n_embd"]
    fields = dict(vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["n_layer"],
                  num_heads=hf["n_head"], mlp_dim=hf.get("n_inner") or 4 * d,
                  activation=_GPT2_ACTIVATIONS[act], norm="layernorm",
                  norm_eps=hf.get("layer_norm_epsilon", 1e-5), use_bias=True,
                  positions="learned", max_len=hf["n_positions"], tie_embeddings=True,
                  init_std=hf.get("initializer_range", 0.02))
  elif kind == "llama":
    if hf.get("attention_bias") or hf.get("mlp_bias") or hf.get("hidden_act", "silu") != "silu":
      raise UserError("Llama variants with biases or a non-SiLU MLP are unsupported")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}  # transformers 5 | 4
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
      raise UserError(f"unsupported rope_type {rope_type!r} (default and llama3 are)")
    fields = dict(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
                  num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                  num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                  head_dim=hf.get("head_dim"), mlp_dim=hf["intermediate_size"],
                  activation="swiglu", norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
                  use_bias=False, positions="rope",
                  rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
                  max_len=hf.get("max_position_embeddings", 2048),
                  tie_embeddings=hf.get("tie_word_embeddings", False),
                  init_std=hf.get("initializer_range", 0.02))
    if rope_type == "llama3":
      fields.update(rope_scaling="llama3", rope_scaling_factor=float(rope["factor"]),
                    rope_low_freq_factor=float(rope["low_freq_factor"]),
                    rope_high_freq_factor=float(rope["high_freq_factor"]),
                    rope_original_max_len=int(rope["original_max_position_embeddings"]))
  else:
    raise UserError(f"unsupported model_type {kind!r}: gpt2 and llama are supported")
  try:
    return ModelConfig(**{**fields, **overrides})
  except ValueError as e:
    raise UserError(str(e)) from None


def config_to_hf(cfg: ModelConfig) -> dict:
  """The HF config.json (dict) of an exportable ModelConfig."""
  if family(cfg) == "gpt2":
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[cfg.activation]
    return dict(architectures=["GPT2LMHeadModel"], model_type="gpt2",
                vocab_size=cfg.vocab_size, n_embd=cfg.d_model, n_layer=cfg.num_layers,
                n_head=cfg.num_heads, n_inner=cfg.mlp_dim, n_positions=cfg.max_len,
                activation_function=act, layer_norm_epsilon=cfg.norm_eps,
                initializer_range=cfg.init_std, tie_word_embeddings=True,
                torch_dtype=cfg.param_dtype)
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rope_scaling == "llama3":
    rope.update(rope_type="llama3", factor=cfg.rope_scaling_factor,
                low_freq_factor=cfg.rope_low_freq_factor,
                high_freq_factor=cfg.rope_high_freq_factor,
                original_max_position_embeddings=cfg.rope_original_max_len)
  return dict(architectures=["LlamaForCausalLM"], model_type="llama",
              vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
              num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
              num_key_value_heads=cfg.kv_heads, head_dim=cfg.dim_per_head,
              intermediate_size=cfg.mlp_dim, hidden_act="silu", rms_norm_eps=cfg.norm_eps,
              max_position_embeddings=cfg.max_len, tie_word_embeddings=cfg.tie_embeddings,
              attention_bias=False, mlp_bias=False, initializer_range=cfg.init_std,
              rope_theta=cfg.rope_theta,
              rope_scaling=rope if cfg.rope_scaling == "llama3" else None,  # transformers 4
              rope_parameters=rope,  # transformers 5
              torch_dtype=cfg.param_dtype)


def _layer_map(cfg: ModelConfig, kind: str):
  """[(hf name, lm path, to_lm, to_hf)] of one layer; to_lm maps an HF array to lm's shape."""
  d, h, g, k = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
  same = lambda x: x
  if kind == "llama":  # nn.Linear: [out, in]
    heads_in = lambda n: (lambda w: w.T.reshape(d, n, k), lambda w: w.reshape(d, n * k).T)
    return [("input_layernorm.weight", "ln_attn/scale", same, same),
            ("self_attn.q_proj.weight", "attn/query/kernel", *heads_in(h)),
            ("self_attn.k_proj.weight", "attn/key/kernel", *heads_in(g)),
            ("self_attn.v_proj.weight", "attn/value/kernel", *heads_in(g)),
            ("self_attn.o_proj.weight", "attn/out/kernel", lambda w: w.T.reshape(h, k, d),
             lambda w: w.reshape(h * k, d).T),
            ("post_attention_layernorm.weight", "ln_mlp/scale", same, same),
            ("mlp.gate_proj.weight", "mlp/wi/kernel", np.transpose, np.transpose),
            ("mlp.up_proj.weight", "mlp/wi_gate/kernel", np.transpose, np.transpose),
            ("mlp.down_proj.weight", "mlp/wo/kernel", np.transpose, np.transpose)]
  # GPT-2's Conv1D: [in, out]; c_attn holds q, k and v side by side (split in _gpt2_qkv).
  return [("ln_1.weight", "ln_attn/scale", same, same),
          ("ln_1.bias", "ln_attn/bias", same, same),
          ("attn.c_proj.weight", "attn/out/kernel", lambda w: w.reshape(h, k, d),
           lambda w: w.reshape(h * k, d)),
          ("attn.c_proj.bias", "attn/out/bias", same, same),
          ("ln_2.weight", "ln_mlp/scale", same, same),
          ("ln_2.bias", "ln_mlp/bias", same, same),
          ("mlp.c_fc.weight", "mlp/wi/kernel", same, same),
          ("mlp.c_fc.bias", "mlp/wi/bias", same, same),
          ("mlp.c_proj.weight", "mlp/wo/kernel", same, same),
          ("mlp.c_proj.bias", "mlp/wo/bias", same, same)]


def _names(kind: str):
  """(prefix of layer i, {top-level hf name: lm path})."""
  if kind == "llama":
    return "model.layers.{}.", {"model.embed_tokens.weight": "embed/embedding",
                                "model.norm.weight": "ln_final/scale"}
  return "transformer.h.{}.", {"transformer.wte.weight": "embed/embedding",
                               "transformer.wpe.weight": "pos_embed/embedding",
                               "transformer.ln_f.weight": "ln_final/scale",
                               "transformer.ln_f.bias": "ln_final/bias"}


def _set(tree: dict, path: str, value):
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def _get(tree: dict, path: str):
  for p in path.split("/"):
    tree = tree[p]
  return tree


def params_from_hf(cfg: ModelConfig, tensors: dict[str, np.ndarray], dtype) -> dict:
  """lm params (numpy, unscanned) from HF tensors; every expected weight must be present."""
  kind = family(cfg)
  # Checkpoints of the bare GPT2Model / LlamaModel lack the transformer. / model. prefix.
  prefix = "transformer." if kind == "gpt2" else "model."
  tensors = {(n if n.startswith(prefix) or n == "lm_head.weight" else prefix + n): t
             for n, t in tensors.items()}
  cast = lambda x: np.asarray(x, dtype=dtype)

  def take(name):
    if name not in tensors:
      raise UserError(f"the checkpoint has no tensor {name!r}")
    return tensors[name]

  layer_prefix, top = _names(kind)
  params = {}
  for hf_name, path in top.items():
    _set(params, path, cast(take(hf_name)))
  pad = cfg.padded_vocab_size - cfg.vocab_size  # vocab_pad_multiple: zero rows, never predicted
  _set(params, "embed/embedding", np.pad(params["embed"]["embedding"], ((0, pad), (0, 0))))
  if not cfg.tie_embeddings:
    _set(params, "unembed/kernel", cast(np.pad(take("lm_head.weight"), ((0, pad), (0, 0))).T))
  d, h, k = cfg.d_model, cfg.num_heads, cfg.dim_per_head
  for i in range(cfg.num_layers):
    layer = {}
    for hf_name, path, to_lm, _ in _layer_map(cfg, kind):
      _set(layer, path, cast(to_lm(take(layer_prefix.format(i) + hf_name))))
    if kind == "gpt2":
      qkv_w = take(layer_prefix.format(i) + "attn.c_attn.weight")  # [D, 3 H K]
      qkv_b = take(layer_prefix.format(i) + "attn.c_attn.bias")
      for j, name in enumerate(("query", "key", "value")):
        _set(layer, f"attn/{name}/kernel", cast(qkv_w[:, j * d:(j + 1) * d].reshape(d, h, k)))
        _set(layer, f"attn/{name}/bias", cast(qkv_b[j * d:(j + 1) * d].reshape(h, k)))
    params[f"layer_{i}"] = layer
  return params


def params_to_hf(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
  """HF tensors (numpy) from lm params (unscanned)."""
  kind = family(cfg)
  layer_prefix, top = _names(kind)
  np_ = lambda x: np.asarray(x)
  tensors = {hf_name: np_(_get(params, path)) for hf_name, path in top.items()}
  v = cfg.vocab_size  # padded rows (vocab_pad_multiple) are dropped
  embedding = next(name for name, path in top.items() if path == "embed/embedding")
  tensors[embedding] = tensors[embedding][:v]
  if not cfg.tie_embeddings:
    tensors["lm_head.weight"] = np_(_get(params, "unembed/kernel"))[:, :v].T
  d = cfg.d_model
  for i in range(cfg.num_layers):
    layer = params[f"layer_{i}"]
    for hf_name, path, _, to_hf in _layer_map(cfg, kind):
      tensors[layer_prefix.format(i) + hf_name] = to_hf(np_(_get(layer, path)))
    if kind == "gpt2":
      names = ("query", "key", "value")
      tensors[layer_prefix.format(i) + "attn.c_attn.weight"] = np.concatenate(
          [np_(layer["attn"][n]["kernel"]).reshape(d, d) for n in names], axis=1)
      tensors[layer_prefix.format(i) + "attn.c_attn.bias"] = np.concatenate(
          [np_(layer["attn"][n]["bias"]).reshape(d) for n in names])
  return tensors
