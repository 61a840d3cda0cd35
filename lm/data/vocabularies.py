"""Vocabularies: a character-level seqio.Vocabulary and SentencePiece models trained locally."""
import hashlib
import os
import tempfile

import gin
import numpy as np
import seqio
import sentencepiece as spm
import tensorflow as tf

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
