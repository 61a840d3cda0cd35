"""SeqIO task registrations: bundled tiny Shakespeare, local text/JSONL files, TFDS datasets.

Two kinds of task:
- corpus tasks treat one text as a continuous stream and sample random windows from it
  (nanoGPT's recipe); each shard draws its own windows from its own seed;
- document tasks read documents (lines of .txt files, JSONL records, TFDS examples), append
  EOS and split long documents into sequence-length pieces; the feature converter packs them.
"""
import codecs
import functools
import glob
import gzip
import json
import os
from typing import Mapping, Sequence

import gin
import seqio
import tensorflow as tf

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


class RandomOffsetsSource(seqio.DataSource):
  """An endless stream of {"offset": uniform in [0, 1), "split": index of the split}.

  Sharding is by seed, so any number of shards draw independent, reproducible streams.
  """

  def __init__(self, splits: Sequence[str]):
    super().__init__(splits=splits, num_input_examples=None, caching_permitted=False)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split):
    return [split]

  def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **unused):
    del shuffle, unused
    shard = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    split_index = list(self.splits).index(split)
    stream_seed = hash((seed or 0, split_index) + shard) % (2**31)
    return tf.data.Dataset.random(seed=stream_seed).map(lambda x: {
        "offset": tf.cast(x % (2**30), tf.float64) / 2**30, "split": split_index})


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
      source=RandomOffsetsSource(splits=tuple(splits)),
      preprocessors=[functools.partial(_corpus_windows, texts=tuple(splits.values()))],
      output_features={"targets": seqio.Feature(vocabulary, add_eos=False)},
      metric_fns=[])


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


def _document_task(name, source, vocabulary, text_key):
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


def _expand(pattern: str) -> list[str]:
  paths = sorted(glob.glob(os.path.expanduser(pattern)))
  if not paths:
    raise UserError(f"no data file matches {pattern!r}")
  for path in paths:
    _check_utf8(path)
  return paths


def _open(path):
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _check_utf8(path: str):
  """Fails early, naming the file, on empty files and invalid UTF-8 (read in 16 MB chunks)."""
  decoder = codecs.getincrementaldecoder("utf-8")()
  offset = 0  # bytes read before the current chunk
  try:
    with _open(path) as f:
      while chunk := f.read(1 << 24):
        decoder.decode(chunk)
        offset += len(chunk)
      decoder.decode(b"", final=True)
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: invalid UTF-8 near byte {offset + e.start}") from None
  if offset == 0:
    raise UserError(f"{path}: data file is empty")


def _read_documents(paths: Sequence[str], file_format: str, text_key: str):
  for path in paths:
    with _open(path) as f:
      for line_no, line in enumerate(f, 1):
        line = line.decode("utf-8").rstrip("\n")
        if file_format == "jsonl":
          try:
            text = json.loads(line)[text_key] if line.strip() else ""
          except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{line_no}: not a JSON object with a {text_key!r} field")
        else:
          text = line
        if text.strip():
          yield text


@gin.configurable
def register_files_task(name: str, split_patterns: Mapping[str, str], vocabulary,
                        file_format: str = "text", text_key: str = "text") -> str:
  """A document task over local files: one document per line of .txt, or per JSONL record.

  `split_patterns` maps split names to globs (".gz" files are read too); every file is checked
  for existence and UTF-8 here, so bad data fails before training starts. Returns `name`, so
  gin can bind `InputConfig.task = @register_files_task()`.
  """
  if file_format not in ("text", "jsonl"):
    raise UserError(f"file_format must be 'text' or 'jsonl', not {file_format!r}")
  files = {split: _expand(pattern) for split, pattern in split_patterns.items()}

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed  # seqio shuffles the examples
    return tf.data.Dataset.from_generator(
        lambda: ({"text": t} for t in _read_documents(files[split], file_format, text_key)),
        output_signature={"text": tf.TensorSpec((), tf.string)})

  source = seqio.FunctionDataSource(dataset_fn, splits=tuple(files), caching_permitted=False)
  _document_task(name, source, vocabulary, "text")
  return name


@gin.configurable
def register_tfds_task(name: str, tfds_name: str, vocabulary, data_dir: str | None = None,
                       text_key: str = "text", splits: Sequence[str] | Mapping[str, str] = None):
  """A document task over a TFDS dataset already prepared under `data_dir` (no download)."""
  source = seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=data_dir, splits=splits)
  _document_task(name, source, vocabulary, text_key)
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
