"""Register an `lm-prep` output directory as a SeqIO task, in one line.

From Python:
  register_prepared_task("my_corpus", "/data/prepared")   # uses DIR/spm.model
From gin (the call runs when TASK is first used and returns the name):
  TASK = @my_corpus/register_prepared_task()
  my_corpus/register_prepared_task.name = "my_corpus"
  my_corpus/register_prepared_task.data_dir = "/data/prepared"

Splits come from a hash of each document id (`splits.split_of`), the same one
the pipeline used for the per-split counts in report.json.
"""

import functools
import glob
import json
import os
from typing import Optional, Union

import gin
import seqio

from lm.data.prep import splits
from lm.data.sources import LinesDataSource
from lm.data.tasks import register_document_task
from lm.errors import UserError

VocabularyArg = Union[None, str, seqio.Vocabulary]


def _vocabulary(data_dir: str, vocabulary: VocabularyArg) -> seqio.Vocabulary:
  if isinstance(vocabulary, seqio.Vocabulary):
    return vocabulary
  path = vocabulary or os.path.join(data_dir, "spm.model")
  if not os.path.exists(path):
    raise UserError(f"no vocabulary: {path} does not exist (run lm-prep with "
                    "--spm_vocab_size, or pass vocabulary=)")
  return seqio.SentencePieceVocabulary(path)


def _validation_fraction(data_dir: str) -> float:
  path = os.path.join(data_dir, "report.json")
  try:
    with open(path) as f:
      return float(json.load(f)["config"]["validation_fraction"])
  except OSError:
    raise UserError(f"{path} is missing (not a complete lm-prep output directory?)") from None
  except (ValueError, KeyError, TypeError):
    raise UserError(f"{path} has no config.validation_fraction") from None


@gin.configurable
def register_prepared_task(name: str, data_dir: str,
                           vocabulary: VocabularyArg = None,
                           validation_fraction: Optional[float] = None) -> str:
  """Registers (or re-registers) task `name` over an lm-prep output dir.

  A document task like `lm.data.tasks.register_files_task`: EOS ends every document and long
  documents are cut into SEQ_LEN pieces, so every token of every kept document is trained on.

  Args:
    name: the SeqIO task name.
    data_dir: the --output_dir of lm-prep.
    vocabulary: a seqio.Vocabulary, a SentencePiece model path, or None for
      the model lm-prep trained (DIR/spm.model).
    validation_fraction: share of documents in "validation"; None reads the
      value lm-prep used from DIR/report.json.
  Returns:
    `name`, so gin can use the call as the value of a TASK macro.
  """
  if not os.path.isdir(data_dir):
    raise UserError(f"{data_dir} is not a directory (an lm-prep --output_dir)")
  files = sorted(glob.glob(os.path.join(data_dir, "data-*.jsonl.gz")))
  if not files:
    raise UserError(f"{data_dir} holds no data-*.jsonl.gz (not an lm-prep "
                    "output directory?)")
  if validation_fraction is None:
    validation_fraction = _validation_fraction(data_dir)
  split_of = functools.partial(splits.split_of, validation_fraction=validation_fraction)
  source = LinesDataSource({splits.TRAIN: files, splits.VALIDATION: files}, "jsonl", "text",
                           split_of=split_of)
  register_document_task(name, source, _vocabulary(data_dir, vocabulary), "text")
  return name
