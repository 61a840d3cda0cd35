"""SentencePiece model trained on a sample of the kept text; token counts.

The model uses seqio's id convention (pad=0, eos=1, unk=2, no bos) so it can
be passed straight to `seqio.SentencePieceVocabulary`.
"""

import collections
import functools
import gzip
import json
import tempfile
from typing import Iterator, List

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
import sentencepiece as sp

from lm.data.prep import splits
from lm.data.prep.pipeline import SumCounters

SPM_FILE = "spm.model"


def _kept_docs(path: str) -> Iterator[dict]:
  with FileSystems.open(path, compression_type="uncompressed") as raw:
    with gzip.GzipFile(fileobj=raw) as f:
      for line in f:
        yield json.loads(line)


def _sample(files: List[str], rate: float) -> Iterator[str]:
  """A deterministic `rate` fraction of the kept documents, whole."""
  for path in files:
    for doc in _kept_docs(path):
      if splits.stable_hash("spm:" + doc["id"]) % 1_000_000 < rate * 1_000_000:
        yield doc["text"]


def train_spm(files: List[str], model_path: str, vocab_size: int,
              kept_chars: int, sample_chars: int) -> None:
  """Trains `model_path` (any Beam filesystem) on ~`sample_chars` of text.

  Uses the same trainer as the tiny-Shakespeare vocabulary
  (`lm.data.vocabularies.train_sentencepiece`), so decoding is lossless:
  newlines and runs of spaces survive a round trip.
  """
  from lm.data.vocabularies import train_sentencepiece  # TensorFlow: driver only.
  rate = min(1.0, sample_chars / max(kept_chars, 1))
  text = "\n".join(_sample(files, rate))
  with tempfile.TemporaryDirectory() as local:
    path = train_sentencepiece(text, vocab_size, out_dir=local,
                               hard_vocab_limit=False)
    with open(path, "rb") as src, FileSystems.create(
        model_path, compression_type="uncompressed") as dst:
      dst.write(src.read())


@functools.lru_cache(maxsize=2)
def _processor(model_path: str) -> sp.SentencePieceProcessor:
  with FileSystems.open(model_path, compression_type="uncompressed") as f:
    return sp.SentencePieceProcessor(model_proto=f.read())


def _count_file(path, model_path, validation_fraction):
  proc, counts = _processor(model_path), collections.Counter()
  for doc in _kept_docs(path):
    split = splits.split_of(doc["id"], validation_fraction)
    counts[f"tokens/{split}"] += len(proc.encode(doc["text"]))
  return counts


def count_tokens(p: beam.Pipeline, files: List[str], model_path: str,
                 validation_fraction: float):
  """Adds a graph counting SentencePiece tokens per split; returns it."""
  return (p | "KeptFiles" >> beam.Create(files)
          | "SpreadKept" >> beam.Reshuffle()
          | "CountTokens" >> beam.Map(_count_file, model_path,
                                      validation_fraction)
          | "SumTokens" >> beam.CombineGlobally(
              SumCounters()).without_defaults())
