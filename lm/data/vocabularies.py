"""Vocabularies: a character-level seqio.Vocabulary, SentencePiece models trained locally, and
a model directory's own tokenizer (`model_vocabulary`)."""
import functools
import hashlib
import os
import tempfile

import gin
import numpy as np
import seqio
import sentencepiece as spm
import tensorflow as tf

from lm import tokenizers
from lm.errors import UserError

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2  # seqio's conventions; characters start at 3.
_NUM_SPECIAL = 3


class CharVocabulary(seqio.Vocabulary):
  """One id per character of `chars` (e.g. the 65 characters of tiny Shakespeare)."""

  def __init__(self, chars: str):
    self._chars = "".join(sorted(set(chars)))
    self._index = {c: i + _NUM_SPECIAL for i, c in enumerate(self._chars)}
    codepoints = [ord(c) for c in self._chars]
    lookup = np.full(max(codepoints) + 1, UNK_ID, np.int32)
    lookup[codepoints] = np.arange(len(codepoints)) + _NUM_SPECIAL
    self._lookup = lookup
    self._codepoints = np.array([0] * _NUM_SPECIAL + codepoints, np.int32)
    super().__init__(extra_ids=0)

  @property
  def chars(self) -> str:
    return self._chars

  @property
  def eos_id(self):
    return EOS_ID

  @property
  def unk_id(self):
    return UNK_ID

  @property
  def _base_vocab_size(self):
    return len(self._chars) + _NUM_SPECIAL

  def _encode(self, s):
    return [self._index.get(c, UNK_ID) for c in s]

  def _decode(self, ids):
    return "".join(self._chars[i - _NUM_SPECIAL] for i in ids if i >= _NUM_SPECIAL)

  def _encode_tf(self, s):
    codepoints = tf.strings.unicode_decode(s, "UTF-8")
    known = codepoints < len(self._lookup)
    safe = tf.where(known, codepoints, 0)
    return tf.where(known, tf.gather(tf.constant(self._lookup), safe), UNK_ID)

  def _decode_tf(self, ids):
    ids = tf.convert_to_tensor(ids)
    chars = tf.ragged.boolean_mask(ids, ids >= _NUM_SPECIAL)
    return tf.strings.unicode_encode(tf.gather(tf.constant(self._codepoints), chars), "UTF-8")

  def __eq__(self, other):
    return isinstance(other, CharVocabulary) and other.chars == self.chars

  def __hash__(self):
    return hash(self._chars)


def cache_dir() -> str:
  """Where trained vocabularies are kept: $LM_CACHE_DIR, else ~/.cache/lm."""
  return os.environ.get("LM_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "lm"))


def train_sentencepiece(text: str, vocab_size: int, model_type: str = "unigram",
                        out_dir: str | None = None, hard_vocab_limit: bool = True) -> str:
  """Trains a SentencePiece model on `text` (once: cached by content) and returns its path.

  Ids follow seqio's convention (pad 0, eos 1, unk 2, no bos), so the model plugs into
  seqio.SentencePieceVocabulary and the decoder feature converter unchanged. Decoding is
  lossless for every character of `text`: newlines are a piece, spaces are never folded.
  hard_vocab_limit=False lets a small text yield fewer than `vocab_size` pieces.
  """
  options = f"{vocab_size}:{model_type}:" + ("" if hard_vocab_limit else "soft:")
  key = hashlib.sha256(options.encode() + text.encode()).hexdigest()[:16]
  out_dir = out_dir or os.path.join(cache_dir(), "spm")
  path = os.path.join(out_dir, f"spm_{model_type}_{vocab_size}_{key}.model")
  if os.path.exists(path):
    return path
  os.makedirs(out_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
      f.write(text)
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(tmp, "spm"), vocab_size=vocab_size,
        model_type=model_type, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        character_coverage=1.0, num_threads=1, minloglevel=2, user_defined_symbols=["\n"],
        normalization_rule_name="identity",  # keep newlines and spacing: decoding is lossless
        max_sentence_length=1 << 16, split_by_whitespace=True, remove_extra_whitespaces=False,
        hard_vocab_limit=hard_vocab_limit)
    os.replace(os.path.join(tmp, "spm.model"), path)  # atomic: readers never see half a file
  return path


@gin.configurable
def sentencepiece_vocabulary(path: str) -> seqio.SentencePieceVocabulary:
  return seqio.SentencePieceVocabulary(path)


class TokenizerVocabulary(seqio.Vocabulary):
  """A model directory's HF tokenizer (MODEL_DIR/tokenizer/tokenizer.json) as a seqio.Vocabulary.

  Ids are exactly `lm.tokenizers.load_tokenizer(model_dir).encode(text, add_special_tokens)`;
  by default nothing is added around a text (seqio's convention: a task appends EOS itself, and
  a rendered chat template already holds its BOS). Equal vocabularies read the same directory,
  so tasks of one model can share a seqio.Mixture.
  """

  def __init__(self, model_dir: str, add_special_tokens: bool = False):
    self.directory = os.path.abspath(tokenizers.tokenizer_dir(model_dir))
    self.add_special_tokens = add_special_tokens
    self.tokenizer = tokenizers.load_tokenizer(model_dir)
    super().__init__(extra_ids=0)

  @property
  def bos_id(self):
    return self.tokenizer.bos_id

  @property
  def eos_id(self):
    return self.tokenizer.eos_id

  @property
  def unk_id(self):
    return None  # ids past the tokenizer (a padded vocab) decode to nothing, not to an unk

  @property
  def _base_vocab_size(self):
    return self.tokenizer.vocab_size

  def _encode(self, s):
    return self.tokenizer.encode(s, add_special_tokens=self.add_special_tokens)

  def _decode(self, ids):
    n = self.tokenizer.vocab_size
    return self.tokenizer.decode([i for i in map(int, ids) if 0 <= i < n])

  def _encode_tf(self, s):
    def encode(text):  # bytes, or a 0-d array of them (eager mode)
      return np.array(self._encode(np.asarray(text).item().decode("utf-8")), np.int32)
    ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
    return tf.ensure_shape(ids, [None])

  def _decode_tf(self, ids):
    def decode(ids_2d):
      return np.array([self._decode(row).encode("utf-8") for row in ids_2d], object)
    ids = tf.convert_to_tensor(ids)
    texts = tf.numpy_function(decode, [tf.reshape(ids, [-1, tf.shape(ids)[-1]])], tf.string,
                              stateful=False)
    return tf.reshape(texts, tf.shape(ids)[:-1])

  def __eq__(self, other):
    return (isinstance(other, TokenizerVocabulary) and other.directory == self.directory and
            other.add_special_tokens == self.add_special_tokens)

  def __hash__(self):
    return hash((self.directory, self.add_special_tokens))


@gin.configurable
def model_vocabulary(model_dir: str | None = gin.REQUIRED, add_special_tokens: bool = False
                     ) -> seqio.Vocabulary | None:
  """The vocabulary of a model directory's own tokenizer (MODEL_DIR/tokenizer/), so a SeqIO task
  is tokenized as that model (a run, an `lm-convert import-hf/import-gguf` import) expects.

  chars.json -> CharVocabulary, spm.model -> seqio.SentencePieceVocabulary, tokenizer.json ->
  TokenizerVocabulary (add_special_tokens applies to it only: char and SentencePiece tokenizers
  add nothing). Bind it in gin: `register_files_task.vocabulary = @model_vocabulary()` with
  `model_vocabulary.model_dir = '/path/to/smollm2'`. model_dir None (finetune.gin's INIT_FROM
  unset) gives None: the register functions then register nothing, and lm-train stops on the
  missing INIT_FROM.
  """
  if model_dir is None:
    return None
  return _model_vocabulary(os.path.abspath(os.path.expanduser(model_dir)), add_special_tokens)


@functools.cache  # gin may build a config twice; one tokenizer load per directory
def _model_vocabulary(model_dir: str, add_special_tokens: bool) -> seqio.Vocabulary:
  directory = tokenizers.tokenizer_dir(model_dir)
  tok = tokenizers.load_tokenizer(model_dir)
  if tok is None:
    raise UserError(f"{model_dir} has no tokenizer ({directory}/ holds none of "
                    f"{tokenizers.CHARS_FILE}, {tokenizers.SPM_FILE}, {tokenizers.HF_FILE})")
  if isinstance(tok, tokenizers.CharTokenizer):
    return CharVocabulary(tok.chars)
  if isinstance(tok, tokenizers.SentencePieceTokenizer):
    return seqio.SentencePieceVocabulary(os.path.join(directory, tokenizers.SPM_FILE))
  return TokenizerVocabulary(model_dir, add_special_tokens)


def base_vocabulary(vocab: seqio.Vocabulary) -> seqio.Vocabulary:
  """Unwraps lazily built vocabularies (lm.data.tasks._LazyVocabulary holds a factory)."""
  factory = getattr(vocab, "_factory", None)
  return factory() if callable(factory) else vocab


def task_tokenizer(vocab: seqio.Vocabulary) -> tokenizers.Tokenizer:
  """The lm.tokenizers.Tokenizer that gives `vocab`'s ids, with the start ids of a run trained
  on a task in it (lm.tokenizers' start rule): a character table or SentencePiece model with
  DOCUMENT_START_ID (the run saves it as start.json), a model's HF tokenizer as it is."""
  vocab = base_vocabulary(vocab)
  if isinstance(vocab, TokenizerVocabulary):
    return vocab.tokenizer
  if isinstance(vocab, CharVocabulary):
    return tokenizers.CharTokenizer(vocab.chars, tokenizers.DOCUMENT_START_ID)
  if isinstance(vocab, seqio.SentencePieceVocabulary) and not vocab.extra_ids:
    return tokenizers.SentencePieceTokenizer(bos_id=tokenizers.DOCUMENT_START_ID,
                                             model_proto=vocab.sp_model)
  raise UserError(f"a {type(vocab).__name__} has no lm tokenizer: use a character, "
                  "SentencePiece or model_vocabulary vocabulary")
