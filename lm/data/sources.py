"""SeqIO data sources: position-addressable random windows, and lines of local text/JSONL files.

Both are plain tf.data graphs (no Python generators), so a reader can resume them cheaply:
window i of a corpus stream is a pure function of (seed, split, shard, i), and file datasets
are checkpointable tf.data iterators (lm.data.pipeline saves their state).
"""
import glob
import gzip
import json
import os
from typing import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from lm.errors import UserError


class RandomWindowsSource(seqio.DataSource):
  """An endless stream of {"offset": uniform in [0, 1), "split": index of the split}.

  Element i of a stream is drawn from a stateless RNG keyed by (stream seed, i), where the
  stream seed mixes the reader's seed, the split and the shard: any number of shards draw
  independent, reproducible streams, and `starting_at(i)` begins a stream at element i in
  O(1) (resuming a run does not replay the windows it has seen).
  """

  def __init__(self, splits: Sequence[str], start: int = 0):
    super().__init__(splits=splits, num_input_examples=None, caching_permitted=False,
                     performs_internal_shuffling=True)
    self.start = start

  def starting_at(self, start: int) -> "RandomWindowsSource":
    return RandomWindowsSource(self.splits, start)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split):
    return [split]

  def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **unused):
    del shuffle, unused
    shard = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    split_index = list(self.splits).index(split)
    stream_seed = hash((seed or 0, split_index) + shard) % (2**31)  # ints hash alike everywhere

    def offset(i):
      u = tf.random.stateless_uniform([], seed=tf.stack([tf.constant(stream_seed, tf.int64), i]),
                                      dtype=tf.float64)
      return {"offset": u, "split": split_index}

    return tf.data.Dataset.range(self.start, 2**62).map(offset)


def _compression(path):
  return tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")


class LinesDataSource(seqio.FileDataSource):
  """Documents of local files as {"text"}: one per line of .txt, or per JSONL record.

  `split_files` maps each split to its files (.gz ones are decompressed). With `split_of`
  (a function of a record's "id"), every split reads all files and keeps its own records,
  e.g. lm-prep's hash split. Training shuffles the file order anew every epoch (seeded);
  blank documents are skipped.
  """

  def __init__(self, split_files: Mapping[str, Sequence[str]], file_format: str = "text",
               text_key: str = "text", split_of: Callable[[str], str] | None = None):
    self._format, self._text_key, self._split_of = file_format, text_key, split_of
    super().__init__(
        read_file_fn=lambda path: tf.data.TextLineDataset(path, compression_type=_compression(path)),
        split_to_filepattern={s: list(f) for s, f in split_files.items()},
        caching_permitted=False)

  def _parse(self, line: bytes, split: str) -> bytes:
    """The record's text, or b"" when it belongs to another split."""
    record = json.loads(line)
    if self._split_of and self._split_of(str(record["id"])) != split:
      return b""
    return record[self._text_key].encode("utf-8")

  def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **kwargs):
    ds = super().get_dataset(split, shuffle, seed, shard_info, **kwargs)
    ds = ds.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
    if self._format == "jsonl":
      def parse(line):
        text = tf.numpy_function(lambda l: self._parse(l, split), [line], tf.string,
                                 stateful=False)
        return tf.ensure_shape(text, [])
      ds = ds.map(parse)
    ds = ds.filter(lambda text: tf.strings.length(tf.strings.strip(text)) > 0)
    return ds.map(lambda text: {"text": text})


def _open(path):
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def check_files(pattern: str, file_format: str, text_key: str) -> list[str]:
  """The files matching `pattern`, each checked whole: not empty, valid UTF-8 and, for JSONL,
  one JSON object with a string `text_key` per non-blank line. Errors name file and line."""
  paths = sorted(glob.glob(os.path.expanduser(pattern)))
  if not paths:
    raise UserError(f"no data file matches {pattern!r}")
  for path in paths:
    size = 0
    try:
      with _open(path) as f:
        for line_no, raw in enumerate(f, 1):
          size += len(raw)
          line = raw.decode("utf-8")
          if file_format == "jsonl" and line.strip():
            _check_record(line, text_key, f"{path}:{line_no}")
    except UnicodeDecodeError as e:
      raise UserError(f"{path}:{line_no}: invalid UTF-8 near byte {size - len(raw) + e.start}"
                      ) from None
    except (OSError, EOFError) as e:
      raise UserError(f"{path}: cannot read: {e}") from None
    if size == 0:
      raise UserError(f"{path}: data file is empty")
  return paths


def _check_record(line: str, text_key: str, where: str):
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
    raise UserError(f"{where}: not a JSON object with a string {text_key!r} field")
