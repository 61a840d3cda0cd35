"""SeqIO task registrations: bundled tiny Shakespeare, local text/JSONL files, TFDS datasets.

Two kinds of task:
- corpus tasks treat one text as a continuous stream and sample random windows from it
  (nanoGPT's recipe); each shard draws its own windows from its own seed;
- document tasks read documents (lines of .txt files, JSONL records, TFDS examples), append
  EOS and split long documents into sequence-length pieces; the feature converter packs them.
"""
import functools
import os
from typing import Mapping, Sequence

import gin
import seqio
import tensorflow as tf

from lm.data.sources import LinesDataSource, RandomWindowsSource, check_files
from lm.data.vocabularies import CharVocabulary, sentencepiece_vocabulary, train_sentencepiece
from lm.errors import UserError

SHAKESPEARE = os.path.join(os.path.dirname(__file__), "assets", "tinyshakespeare.txt")


@functools.cache
def shakespeare_text() -> str:
  with open(SHAKESPEARE, encoding="utf-8") as f:
    return f.read()


def split_text(text: str, train_fraction: float) -> dict[str, str]:
  """nanoGPT's split: the first `train_fraction` of characters train, the rest validate."""
  n = int(len(text) * train_fraction)
  return {"train": text[:n], "validation": text[n:]}


@functools.cache
def _tokenize_splits(vocabulary, texts: tuple[str, ...]):
  """All splits' tokens end to end, and where each split starts and ends."""
  tokens, bounds = [], []
  for text in texts:
    ids = vocabulary.encode(text)
    bounds.append((len(tokens), len(tokens) + len(ids)))
    tokens.extend(ids)
  return tokens, bounds


def _corpus_windows(dataset, sequence_length, output_features, texts):
  """Maps each random offset to `sequence_length["targets"]` consecutive tokens of its split."""
  length = sequence_length["targets"]
  tokens, bounds = _tokenize_splits(output_features["targets"].vocabulary, texts)
  if min(end - start for start, end in bounds) <= length:
    raise UserError(f"a corpus split has fewer tokens than one window of {length}")
  tokens, bounds = tf.constant(tokens, tf.int32), tf.constant(bounds, tf.int32)

  def window(ex):
    first, end = bounds[ex["split"], 0], bounds[ex["split"], 1]
    span = tf.cast(end - first - length, tf.float64)
    start = first + tf.cast(tf.floor(ex["offset"] * span), tf.int32)
    return {"targets": tokens[start:start + length]}

  return dataset.map(window, num_parallel_calls=tf.data.AUTOTUNE)


def register_corpus_task(name: str, splits: Mapping[str, str], vocabulary: seqio.Vocabulary):
  """A task of random windows over each split's text (a dict split name -> text)."""
  for split, text in splits.items():
    if not text:
      raise UserError(f"task {name}: split {split!r} is empty")
  seqio.TaskRegistry.add(
      name,
      source=RandomWindowsSource(splits=tuple(splits)),
      preprocessors=[functools.partial(_corpus_windows, texts=tuple(splits.values()))],
      output_features={"targets": seqio.Feature(vocabulary, add_eos=False)},
      metric_fns=[], shuffle_buffer_size=None)  # windows are independent: no buffer


def _split_into_pieces(dataset, sequence_length, output_features):
  """Appends EOS to each tokenized document and cuts it into sequence-length pieces."""
  length = sequence_length["targets"]
  eos = output_features["targets"].vocabulary.eos_id

  def pieces(ex):
    tokens = tf.concat([ex["targets"], [eos]], axis=0)
    n = (tf.size(tokens) + length - 1) // length
    return tf.data.Dataset.range(tf.cast(n, tf.int64)).map(
        lambda i: {"targets": tokens[tf.cast(i, tf.int32) * length:
                                     (tf.cast(i, tf.int32) + 1) * length]})

  return dataset.flat_map(pieces)


def register_document_task(name, source, vocabulary, text_key):
  """Registers (or replaces) a task of EOS-terminated documents cut into SEQ_LEN pieces."""
  if name in seqio.TaskRegistry.names():  # gin may build the same config twice
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=source,
      preprocessors=[
          functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_key}),
          seqio.preprocessors.tokenize,
          _split_into_pieces,
      ],
      output_features={"targets": seqio.Feature(vocabulary, add_eos=False)},
      metric_fns=[])


@gin.configurable
def register_files_task(name: str, split_patterns: Mapping[str, str], vocabulary,
                        file_format: str = "text", text_key: str = "text") -> str:
  """A document task over local files: one document per line of .txt, or per JSONL record.

  `split_patterns` maps split names to globs (".gz" files are read too); every file is read
  once here (exists, not empty, UTF-8, every JSONL line an object with a string `text_key`),
  so bad data fails before training starts, naming file and line. Returns `name`, so gin can
  bind `InputConfig.task = @register_files_task()`. vocabulary None (model_vocabulary of an
  unset INIT_FROM, gin_configs/runs/mixture.gin): registers nothing and returns None.
  """
  if vocabulary is None:  # lm-train stops on the missing INIT_FROM itself
    return None
  if file_format not in ("text", "jsonl"):
    raise UserError(f"file_format must be 'text' or 'jsonl', not {file_format!r}")
  files = {split: check_files(pattern, file_format, text_key)
           for split, pattern in split_patterns.items()}
  register_document_task(name, LinesDataSource(files, file_format, text_key), vocabulary, "text")
  return name


@gin.configurable
def register_tfds_task(name: str, tfds_name: str, vocabulary, data_dir: str | None = None,
                       text_key: str = "text", splits: Sequence[str] | Mapping[str, str] = None):
  """A document task over a TFDS dataset already prepared under `data_dir` (no download)."""
  source = seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=data_dir, splits=splits)
  register_document_task(name, source, vocabulary, text_key)
  return name


@gin.configurable
@functools.cache
def shakespeare_char_vocabulary() -> CharVocabulary:
  return CharVocabulary(shakespeare_text())


@functools.cache
def shakespeare_spm_vocabulary(vocab_size: int = 1024) -> seqio.SentencePieceVocabulary:
  """SentencePiece trained on the train split only (cached; trained on first use)."""
  train = split_text(shakespeare_text(), 0.9)["train"]
  return sentencepiece_vocabulary(train_sentencepiece(train, vocab_size))


class _LazyVocabulary(seqio.Vocabulary):
  """Defers building a vocabulary (here: training SentencePiece) until a task is read."""

  def __init__(self, factory):
    self._factory = factory
    super().__init__(extra_ids=0)

  @property
  def eos_id(self):
    return self._factory().eos_id

  @property
  def unk_id(self):
    return self._factory().unk_id

  @property
  def _base_vocab_size(self):
    return self._factory().vocab_size

  def _encode(self, s):
    return self._factory().encode(s)

  def _decode(self, ids):
    return self._factory().decode(ids)

  def _encode_tf(self, s):
    return self._factory().encode_tf(s)

  def _decode_tf(self, ids):
    return self._factory().decode_tf(ids)


def _register_builtin():
  splits = split_text(shakespeare_text(), 0.9)
  register_corpus_task("tiny_shakespeare_char", splits, shakespeare_char_vocabulary())
  register_corpus_task("tiny_shakespeare_spm", splits, _LazyVocabulary(shakespeare_spm_vocabulary))


_register_builtin()
