"""lm-convert import-gguf on small Llama GGUF files this test writes with gguf.GGUFWriter, one per
tensor type (tied and untied), laid out as llama.cpp writes them (Q/K rows permuted).

References: the `gguf` package's own dequantization (weights) and transformers' GGUF loader
(logits, fp32), which dequantizes and un-permutes with its own code.
"""
import json
import os

import gguf
import jax
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from tokenizers import pre_tokenizers

import lm
from lm import tokenizers
from lm.cli import convert
from lm.convert import gguf_import, gguf_tokenizer
from lm.errors import UserError
from lm.models.transformer import Transformer

D, HEADS, KV_HEADS, MLP, LAYERS = 256, 4, 2, 512, 2  # rows of 256: every type's block size
SPECIALS = ["<s>", "</s>", "<|im_start|>"]
TOKENS = np.random.default_rng(1).integers(0, 256, (2, 12))
# (tensor type, tied): every supported type untied; tied with F32 and Q4_1.
CASES = [(t, False) for t in ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                              "Q4_K", "Q6_K")] + [("F32", True), ("Q4_1", True)]
# K-quant blocks gguf cannot write: random bytes with sane fp16 scales (byte offsets in a block).
_K_BLOCKS = {"Q4_K": (144, [0, 2], 3e-4), "Q6_K": (210, [208], 1e-4)}


def _quantize(w: np.ndarray, kind: str, rng):
  """(data, raw_dtype) for GGUFWriter.add_tensor."""
  qtype = Q[kind]
  if kind == "F32":
    return w, None
  if kind == "F16":
    return w.astype(np.float16), None
  if kind in _K_BLOCKS:
    size, scale_offsets, scale = _K_BLOCKS[kind]
    blocks = rng.integers(0, 256, (w.size // 256, size), dtype=np.uint8)
    for offset in scale_offsets:
      blocks[:, offset:offset + 2] = np.float16(scale).reshape(1).view(np.uint8)
    return blocks.reshape(w.shape[0], -1), qtype
  return gguf.quants.quantize(w, qtype), qtype


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's converter: HF's rotate-half rows -> interleaved pairs within each head."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: str, kind: str, tied: bool, seed: int = 0, pre: str = "default",
               add_bos: bool = False, eot: int | None = None, eom: int | None = None):
  """A 2-layer GQA Llama with random weights (HF layout, [out, in]) and a byte-level tokenizer
  (BOS 0, EOS 1; end-of-turn / end-of-message ids if given)."""
  rng = np.random.default_rng(seed)
  # GPT-2's 256 byte tokens and those the merges make (digit and contraction merges show
  # which pre-tokenizer split the text).
  vocab = SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet()) + [
      "Ġt", "he", "Ġthe", "12", "123", "'T"]
  k = D // HEADS
  normal = lambda *shape: rng.normal(0.0, 0.15, shape).astype(np.float32)
  tensors = {"token_embd.weight": normal(len(vocab), D),
             "output_norm.weight": 1 + normal(D)}
  if not tied:
    tensors["output.weight"] = normal(len(vocab), D)
  for i in range(LAYERS):
    tensors.update({
        f"blk.{i}.attn_norm.weight": 1 + normal(D), f"blk.{i}.ffn_norm.weight": 1 + normal(D),
        f"blk.{i}.attn_q.weight": _permute(normal(HEADS * k, D), HEADS),
        f"blk.{i}.attn_k.weight": _permute(normal(KV_HEADS * k, D), KV_HEADS),
        f"blk.{i}.attn_v.weight": normal(KV_HEADS * k, D),
        f"blk.{i}.attn_output.weight": normal(D, HEADS * k),
        f"blk.{i}.ffn_gate.weight": normal(MLP, D), f"blk.{i}.ffn_up.weight": normal(MLP, D),
        f"blk.{i}.ffn_down.weight": normal(D, MLP)})
  writer = gguf.GGUFWriter(path, "llama")
  writer.add_block_count(LAYERS)
  writer.add_context_length(64)
  writer.add_embedding_length(D)
  writer.add_feed_forward_length(MLP)
  writer.add_head_count(HEADS)
  writer.add_head_count_kv(KV_HEADS)
  writer.add_rope_dimension_count(k)
  writer.add_rope_freq_base(10000.0)
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_vocab_size(len(vocab))
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre(pre)
  writer.add_add_bos_token(add_bos)
  writer.add_token_list(vocab)
  writer.add_token_types([3] * len(SPECIALS) + [1] * (len(vocab) - len(SPECIALS)))
  writer.add_token_merges(["Ġ t", "h e", "Ġt he", "1 2", "12 3", "' T"])
  writer.add_bos_token_id(0)
  writer.add_eos_token_id(1)
  if eot is not None:
    writer.add_eot_token_id(eot)
  if eom is not None:
    writer.add_eom_token_id(eom)
  writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}")
  for name, w in tensors.items():
    if w.ndim == 1:  # llama.cpp keeps norms in F32
      writer.add_tensor(name, w)
    else:
      data, raw_dtype = _quantize(w, kind, rng)
      writer.add_tensor(name, data, raw_dtype=raw_dtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
  out = {}
  for kind, tied in CASES:
    directory = tmp_path_factory.mktemp(f"{kind}_{'tied' if tied else 'untied'}")
    write_gguf(str(directory / "model.gguf"), kind, tied)
    out[kind, tied] = str(directory / "model.gguf")
  return out


_FORWARD = {}


def _logits(cfg, params):
  """One jitted forward per config (tied / untied), shared by every tensor type."""
  if cfg not in _FORWARD:
    module = Transformer(cfg)
    _FORWARD[cfg] = jax.jit(lambda p, t: module.apply({"params": p}, t))
  return np.asarray(_FORWARD[cfg](params, TOKENS))


@pytest.mark.parametrize("kind,tied", CASES, ids=[f"{k}-{'tied' if t else 'untied'}"
                                                    for k, t in CASES])
def test_import_matches_gguf_dequantization_and_transformers(kind, tied, gguf_files):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  path = gguf_files[kind, tied]
  cfg, params, _ = gguf_import.read_gguf(path)
  assert cfg.tie_embeddings == tied and (cfg.num_heads, cfg.kv_heads) == (HEADS, KV_HEADS)
  # Weights: the package's dequantization (V is not permuted, so it is compared as stored).
  reader = gguf.GGUFReader(path)
  stored = {t.name: t for t in reader.tensors}
  v = stored["blk.1.attn_v.weight"]
  assert v.tensor_type == Q[kind]
  expected = gguf.quants.dequantize(v.data, v.tensor_type).reshape(KV_HEADS * D // HEADS, D)
  np.testing.assert_array_equal(params["layer_1"]["attn"]["value"]["kernel"],
                                expected.T.reshape(D, KV_HEADS, D // HEADS))
  # Logits: transformers' own GGUF loader on the same file.
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file="model.gguf", dtype=torch.float32).eval()
  with torch.no_grad():
    reference = model(torch.tensor(TOKENS)).logits.numpy()
  diff = np.abs(_logits(cfg, params) - reference).max()
  print(f"{kind} tied={tied}: max abs logits diff {diff:.2e} (max |logit| "
        f"{np.abs(reference).max():.1f})")
  assert np.abs(reference).max() > 1.0 and diff <= 1e-4


def test_cli_import_writes_a_complete_model_dir(gguf_files, tmp_path):
  """Weights, tokenizer (ids as transformers' GGUF tokenizer) and special ids; export-hf of
  the imported model loads in transformers with the same tokenizer."""
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  path = gguf_files["Q8_0", False]
  with pytest.raises(SystemExit) as exit_info:
    convert.main(["import-gguf", "--gguf", path, "--model_dir", str(tmp_path / "m"),
                  "--vocab_pad_multiple", "128"])  # 265 tokens -> 384 rows: shardable
  assert exit_info.value.code == 0
  tok = tokenizers.load_tokenizer(str(tmp_path / "m"))
  reference = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                         gguf_file="model.gguf")
  for text in ["the theme", "<s>x</s> the", "héllo\n\t  7"]:
    assert tok.encode(text) == reference.encode(text), text
  assert (tok.bos_id, tok.eos_id) == (0, 1)
  assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<|im_start|>hi"
  with open(tmp_path / "m" / "generation_config.json") as f:
    assert json.load(f) == {"bos_token_id": 0, "eos_token_id": 1}
  # export-hf: transformers loads the same model and tokenizer (and the special ids).
  with pytest.raises(SystemExit) as exit_info:
    convert.main(["export-hf", "--model_dir", str(tmp_path / "m"),
                  "--hf_dir", str(tmp_path / "hf")])
  assert exit_info.value.code == 0
  exported = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  for text in ["the theme", "<s>x</s> the", "héllo\n\t  7"]:
    assert exported.encode(text) == reference.encode(text), text
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
  original = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file="model.gguf", dtype=torch.float32).eval()
  with torch.no_grad():
    diff = (model(torch.tensor(TOKENS)).logits - original(torch.tensor(TOKENS)).logits).abs()
  assert float(diff.max()) <= 1e-4
  assert (model.config.bos_token_id, model.config.eos_token_id) == (0, 1)
  # lm.load, on one device and sharded over 8 (data, fsdp, tensor): the GGUF's logits (the
  # padded rows are zeros and never predicted; export drops them).
  single = np.asarray(lm.load(str(tmp_path / "m")).logits(TOKENS))
  sharded = np.asarray(lm.load(str(tmp_path / "m"), mesh_shape=(2, 2, 2)).logits(TOKENS))
  with torch.no_grad():
    expected = original(torch.tensor(TOKENS)).logits.numpy()
  assert max(np.abs(single - expected).max(), np.abs(sharded - expected).max()) <= 1e-4
  # A second import into the same directory needs --overwrite.
  with pytest.raises(SystemExit) as exit_info:
    convert.main(["import-gguf", "--gguf", path, "--model_dir", str(tmp_path / "m")])
  assert exit_info.value.code == 2


def test_end_of_turn_and_message_ids_end_generation(gguf_files, tmp_path):
  """Issue 19 (suspected, confirmed): tokenizer.ggml.eot_token_id / eom_token_id were dropped
  on import, so generation ran past the <|eot_id|> at which llama.cpp stops. They now join
  eos_token_id (a list, as in Llama 3's generation_config.json) and generation stops there."""
  gguf_import.import_gguf(gguf_files["F32", True], str(tmp_path / "plain"))
  plain = lm.load(str(tmp_path / "plain"))
  assert plain.eos_ids == (1,)
  free = plain.generate([[5, 6, 7]], max_new_tokens=8)[0]
  eot = free[2]  # a token greedy decoding reaches: the end of turn of the second file
  assert 1 not in free and eot not in free[:2]
  path = str(tmp_path / "eot.gguf")
  write_gguf(path, "F32", True, eot=eot, eom=2)  # the same weights (same seed)
  gguf_import.import_gguf(path, str(tmp_path / "m"))
  with open(tmp_path / "m" / "generation_config.json") as f:
    assert json.load(f) == {"bos_token_id": 0, "eos_token_id": [1, eot, 2]}
  model = lm.load(str(tmp_path / "m"))
  assert model.eos_ids == tuple(sorted({1, eot, 2}))
  assert model.generate([[5, 6, 7]], max_new_tokens=8)[0] == free[:3]
  # An end-of-turn id equal to EOS adds nothing.
  assert gguf_import.special_ids({"tokenizer.ggml.eos_token_id": 1,
                                  "tokenizer.ggml.eot_token_id": 1}) == {"eos_token_id": 1}


def test_unsupported_files_are_refused(gguf_files, tmp_path):
  (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
  with pytest.raises(UserError, match="not a readable GGUF"):
    gguf_import.import_gguf(str(tmp_path / "junk.gguf"), str(tmp_path / "out"))
  with pytest.raises(UserError, match="no such GGUF"):
    gguf_import.import_gguf(str(tmp_path / "missing.gguf"), str(tmp_path / "out"))
  meta = gguf_import.metadata(gguf.GGUFReader(gguf_files["F32", True]))
  for key, value, message in [("general.architecture", "mamba", "architecture"),
                              ("llama.rope.scaling.type", "yarn", "RoPE scaling"),
                              ("llama.expert_count", 8, "mixture-of-experts")]:
    with pytest.raises(UserError, match=message):
      gguf_import.hf_config({**meta, key: value}, tied=True)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("pre", ["llama-bpe", "smollm"])
def test_tokenizer_pre_tokenizers_and_bos(pre, tmp_path):
  """Llama 3's split regex (case-insensitive contractions) and SmolLM's digit splitting, with
  BOS added, against transformers' GGUF tokenizer. transformers has no 'smollm' split and uses
  GPT-2's, which keeps digit runs together; llama.cpp (and SmolLM's own tokenizer.json) split
  every digit, as we do. (SmolLM2's vocabulary has no multi-digit token, so on the real model
  the two agree: tests/convert/test_gguf_smollm2.py.)"""
  transformers = pytest.importorskip("transformers")
  write_gguf(str(tmp_path / "model.gguf"), "F32", True, pre=pre, add_bos=True)
  meta = gguf_import.metadata(gguf.GGUFReader(str(tmp_path / "model.gguf")))
  (tmp_path / "tokenizer").mkdir()
  for name, content in gguf_tokenizer.tokenizer_files(meta).items():
    (tmp_path / "tokenizer" / name).write_text(content, encoding="utf-8")
  tok = tokenizers.load_tokenizer(str(tmp_path))
  reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="model.gguf")
  for text in ["the theme x", "I'm DON'T  you'll\n\n\tthe", "héllo 日本 🙂 .,"]:
    ids = tok.encode(text)
    assert ids[0] == 0 and ids == reference.encode(text), text
  digits = tok.encode("x 12345", add_special_tokens=False)
  if pre == "smollm":
    assert [tok.decode([i]) for i in digits] == ["x", " ", "1", "2", "3", "4", "5"]
  else:
    assert digits == reference.encode("x 12345", add_special_tokens=False)
    assert "123" in [tok.decode([i]) for i in digits]
