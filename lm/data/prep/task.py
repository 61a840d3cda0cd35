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
import gzip
import json
import os
import random
from typing import Optional, Union

import gin
import seqio
import tensorflow as tf

from lm.data.prep import splits

VocabularyArg = Union[None, str, seqio.Vocabulary]


def _documents(files, split, validation_fraction):
  for path in files:
    with gzip.open(path, "rt", encoding="utf-8") as f:
      for line in f:
        doc = json.loads(line)
        if splits.split_of(doc["id"], validation_fraction) == split:
          yield {"id": doc["id"], "text": doc["text"]}


def _vocabulary(data_dir: str, vocabulary: VocabularyArg) -> seqio.Vocabulary:
  if isinstance(vocabulary, seqio.Vocabulary):
    return vocabulary
  path = vocabulary or os.path.join(data_dir, "spm.model")
  if not os.path.exists(path):
    raise ValueError(f"no vocabulary: {path} does not exist (run lm-prep with "
                     "--spm_vocab_size, or pass vocabulary=)")
  return seqio.SentencePieceVocabulary(path)


@gin.configurable
def register_prepared_task(name: str, data_dir: str,
                           vocabulary: VocabularyArg = None,
                           validation_fraction: Optional[float] = None) -> str:
  """Registers (or re-registers) task `name` over an lm-prep output dir.

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
  files = sorted(glob.glob(os.path.join(data_dir, "data-*.jsonl.gz")))
  if not files:
    raise ValueError(f"{data_dir} holds no data-*.jsonl.gz (not an lm-prep "
                     "output directory?)")
  if validation_fraction is None:
    with open(os.path.join(data_dir, "report.json")) as f:
      validation_fraction = json.load(f)["config"]["validation_fraction"]

  def dataset_fn(split, shuffle_files, seed=None):
    order = list(files)
    if shuffle_files:
      random.Random(seed).shuffle(order)
    return tf.data.Dataset.from_generator(
        functools.partial(_documents, order, split, validation_fraction),
        output_signature={"id": tf.TensorSpec((), tf.string),
                          "text": tf.TensorSpec((), tf.string)})

  seqio.TaskRegistry.remove(name)  # Re-registering replaces the old task.
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(
          dataset_fn, splits=(splits.TRAIN, splits.VALIDATION),
          caching_permitted=False),
      preprocessors=[
          functools.partial(seqio.preprocessors.rekey,
                            key_map={"targets": "text"}),
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features={"targets": seqio.Feature(
          _vocabulary(data_dir, vocabulary), add_eos=True)},
      metric_fns=[])
  return name
