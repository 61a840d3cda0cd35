"""A GGUF file's tokenizer metadata -> HF tokenizer files (tokenizer.json + tokenizer_config.json).

Byte-level BPE (`tokenizer.ggml.model = 'gpt2'`) is supported: the vocabulary (already spelled
in GPT-2's byte alphabet) and merges become a `tokenizers` BPE model; the pre-tokenizer follows
`tokenizer.ggml.pre` as llama.cpp splits text for that name; tokens typed CONTROL become
special added tokens and USER_DEFINED ones plain added tokens (both matched whole, as
llama.cpp does). The special tokens and the chat template go to tokenizer_config.json, so
lm.tokenizers and transformers' AutoTokenizer both read the result.
"""
import json

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from lm.errors import UserError

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(pre: str):
  """How llama.cpp splits text before BPE, per `tokenizer.ggml.pre`."""
  gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in ("default", "gpt2"):
    return gpt2
  if pre in ("smollm", "starcoder", "refact"):  # every digit alone, then GPT-2's regex
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
  if pre in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe"):
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  raise UserError(f"GGUF pre-tokenizer {pre!r} is not supported (gpt2, smollm, starcoder, "
                  "refact and the Llama 3 family are)")


def build_tokenizer(meta: dict) -> Tokenizer:
  """The `tokenizers` Tokenizer the metadata describes."""
  kind = meta.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise UserError(f"GGUF tokenizer {kind!r} is not supported (only byte-level BPE, 'gpt2')")
  tokens = meta["tokenizer.ggml.tokens"]
  vocab = {token: i for i, token in enumerate(tokens)}
  if len(vocab) != len(tokens):
    raise UserError("the GGUF vocabulary spells two tokens the same")
  merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
  try:
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  except Exception as e:  # tokenizers raises a bare Exception for merges it cannot use
    raise UserError(f"the GGUF tokenizer is malformed: {e}") from None
  tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
  tok.decoder = decoders.ByteLevel()
  types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t, k in zip(tokens, types) if k == _CONTROL])
  tok.add_tokens([AddedToken(t, special=False, normalized=False)
                  for t, k in zip(tokens, types) if k == _USER_DEFINED])
  bos, eos = _token(meta, "bos_token_id"), _token(meta, "eos_token_id")
  single, specials = "$A", []
  if meta.get("tokenizer.ggml.add_bos_token") and bos:
    single, specials = f"{bos} {single}", [(bos, vocab[bos])]
  if meta.get("tokenizer.ggml.add_eos_token") and eos:
    single, specials = f"{single} {eos}", specials + [(eos, vocab[eos])]
  if specials:
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
  return tok


def _token(meta: dict, key: str) -> str | None:
  i = meta.get(f"tokenizer.ggml.{key}")
  return None if i is None else meta["tokenizer.ggml.tokens"][i]


def tokenizer_files(meta: dict) -> dict[str, str]:
  """{file name: text} of the HF tokenizer files (lm.tokenizers' MODEL_DIR/tokenizer/ layout)."""
  config = {"tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": _token(meta, "bos_token_id"),
            "eos_token": _token(meta, "eos_token_id"),
            "unk_token": _token(meta, "unknown_token_id"),
            "pad_token": _token(meta, "padding_token_id"),
            "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
            "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
            "clean_up_tokenization_spaces": False,
            "model_max_length": meta.get("llama.context_length", 2048)}
  if meta.get("tokenizer.chat_template"):
    config["chat_template"] = meta["tokenizer.chat_template"]
  return {"tokenizer.json": build_tokenizer(meta).to_str(),
          "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False)}
