"""GGUF (llama.cpp's format) -> an lm model dir: Llama-family weights, config and tokenizer.

The `gguf` package reads the file (memory-mapped, numpy only) and dequantizes every tensor
with its own `gguf.quants.dequantize` (F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0 and the K-quants).
Tensors are renamed to the HF Llama names and go through lm.convert.hf like an HF import, so
the two importers share one weight mapping and one config validation.

RoPE: llama.cpp's converter permutes the rows of the Q and K projections within each head from
HF's rotate-half order to the interleaved pairs its kernel rotates; `_unpermute` undoes that,
giving the rotate-half layout lm's rope_layout='half' uses (the parity test against
transformers' GGUF loader proves it with logits).
"""
import os

import gguf
import numpy as np

from lm import tokenizers
from lm.convert import hf
from lm.convert.gguf_tokenizer import tokenizer_files
from lm.errors import UserError
from lm.jsonl import write_json
from lm.model_dir import GENERATION_CONFIG, absolute, new_dir, write_model_dir
from lm.models.config import ModelConfig
from lm.models.scanned import stack_layers

_TOP = {"token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
          "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def metadata(reader: gguf.GGUFReader) -> dict:
  """{key: value} of every metadata field (arrays as lists, strings decoded)."""
  return {name: field.contents() for name, field in reader.fields.items()
          if not name.startswith("GGUF.")}


def hf_config(meta: dict, tied: bool) -> dict:
  """The HF LlamaConfig (dict) the metadata describes; what lm cannot represent is refused."""
  arch = meta.get("general.architecture")
  if arch != "llama":
    raise UserError(f"GGUF architecture {arch!r} is not supported (only 'llama')")
  get = lambda key, default=None: meta.get(f"llama.{key}", default)
  heads, kv_heads = get("attention.head_count"), get("attention.head_count_kv")
  if isinstance(heads, list) or isinstance(kv_heads, list):
    raise UserError("per-layer head counts are not supported")
  if get("expert_count", 0):
    raise UserError("mixture-of-experts GGUF models are not supported")
  scaling = get("rope.scaling.type", "none")
  if scaling != "none":
    raise UserError(f"RoPE scaling {scaling!r} is not supported")
  d = get("embedding_length")
  head_dim = get("attention.key_length", d // heads)
  if get("attention.value_length", head_dim) != head_dim:
    raise UserError("different key and value head sizes are not supported")
  if get("rope.dimension_count", head_dim) != head_dim:
    raise UserError("partial rotary embeddings are not supported for Llama GGUF files")
  if get("attention.sliding_window"):
    raise UserError("sliding-window Llama GGUF files are not supported")
  vocab = get("vocab_size") or len(meta.get("tokenizer.ggml.tokens", ()))
  return dict(model_type="llama", vocab_size=vocab, hidden_size=d,
              num_hidden_layers=get("block_count"), num_attention_heads=heads,
              num_key_value_heads=kv_heads or heads, head_dim=head_dim,
              intermediate_size=get("feed_forward_length"),
              rms_norm_eps=get("attention.layer_norm_rms_epsilon", 1e-5),
              rope_theta=get("rope.freq_base", 10_000.0),
              max_position_embeddings=get("context_length", 2048), tie_word_embeddings=tied)


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's Q/K row order (interleaved pairs per head) -> HF's rotate-half order."""
  rows = w.shape[0]
  return w.reshape(heads, rows // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def _hf_name(name: str) -> str:
  if name in _TOP:
    return _TOP[name]
  parts = name.split(".")
  if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER and parts[3] == "weight":
    return f"model.layers.{parts[1]}.{_LAYER[parts[2]]}.weight"
  hint = " (Llama 3.1 RoPE scaling)" if name == "rope_freqs.weight" else ""
  raise UserError(f"GGUF tensor {name!r}{hint} is not supported")


def dequantize(tensor) -> np.ndarray:
  """A GGUF tensor as float32, in numpy's (row-major) shape: ggml's dimensions reversed."""
  try:
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
  except NotImplementedError as e:
    raise UserError(f"tensor {tensor.name}: {e}") from None
  return np.asarray(values, np.float32).reshape(tuple(reversed(tensor.shape.tolist())))


def read_gguf(path: str, **overrides) -> tuple[ModelConfig, dict, dict]:
  """(config, numpy params in lm's layout, metadata) of a Llama GGUF file."""
  path = absolute(path)
  if not os.path.isfile(path):
    raise UserError(f"no such GGUF file: {path}")
  try:
    reader = gguf.GGUFReader(path)
  except (ValueError, OSError) as e:
    raise UserError(f"{path} is not a readable GGUF file: {e}") from None
  meta = metadata(reader)
  tensors = {t.name: t for t in reader.tensors}
  hf_cfg = hf_config(meta, tied="output.weight" not in tensors)
  cfg = hf.config_from_hf(hf_cfg, **overrides)
  arrays = {}
  for name, tensor in tensors.items():
    w = dequantize(tensor)
    if name.endswith("attn_q.weight"):
      w = _unpermute(w, cfg.num_heads)
    elif name.endswith("attn_k.weight"):
      w = _unpermute(w, cfg.kv_heads)
    arrays[_hf_name(name)] = w
  params = hf.params_from_hf(cfg, arrays, cfg.weight_dtype)
  if cfg.scan_layers:
    params = stack_layers(params, cfg.num_layers)
  return cfg, params, meta


def special_ids(meta: dict) -> dict:
  """HF's bos/eos/pad token ids from the tokenizer metadata.

  llama.cpp also ends generation at the end-of-turn and end-of-message tokens
  (tokenizer.ggml.eot_token_id / eom_token_id, e.g. Llama 3's <|eot_id|>, <|eom_id|>); they
  join eos_token_id as a list, as in Llama 3's HF generation_config.json (EOS first).
  """
  keys = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
          "pad_token_id": "padding_token_id"}
  ids = {k: meta[f"tokenizer.ggml.{v}"] for k, v in keys.items()
         if f"tokenizer.ggml.{v}" in meta}
  ends = list(dict.fromkeys(meta[f"tokenizer.ggml.{k}_token_id"] for k in ("eos", "eot", "eom")
                            if f"tokenizer.ggml.{k}_token_id" in meta))  # distinct, in order
  if ends:
    ids["eos_token_id"] = ends if len(ends) > 1 else ends[0]
  return ids


def import_gguf(gguf_path: str, model_dir: str, overwrite: bool = False,
                **overrides) -> ModelConfig:
  """GGUF file -> lm model dir (weights, tokenizer, special ids), all or nothing."""
  cfg, params, meta = read_gguf(gguf_path, **overrides)
  files = tokenizer_files(meta) if "tokenizer.ggml.model" in meta else {}
  with new_dir(model_dir, overwrite, [gguf_path]) as tmp:
    if files:
      os.makedirs(tokenizers.tokenizer_dir(tmp))
      for name, content in files.items():
        with open(os.path.join(tokenizers.tokenizer_dir(tmp), name), "w", encoding="utf-8") as f:
          f.write(content)
    if special_ids(meta):
      write_json(os.path.join(tmp, GENERATION_CONFIG), special_ids(meta))
    write_model_dir(tmp, cfg, params)
  return cfg
