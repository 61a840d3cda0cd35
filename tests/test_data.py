"""SeqIO tasks and the input pipeline: vocabularies, splits, windows, packing, shards, resume."""
import json

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from lm.data import tasks
from lm.data.inputs import InputConfig, make_batches
from lm.data.pipeline import vocabulary
from lm.data.vocabularies import CharVocabulary


def test_char_vocabulary_round_trip():
  vocab = tasks.shakespeare_char_vocabulary()
  assert vocab.vocab_size == 68 and len(vocab.chars) == 65
  text = "ROMEO:\nBut soft, what light?"
  ids = vocab.encode(text)
  assert vocab.decode(ids) == text
  np.testing.assert_array_equal(vocab.encode_tf(tf.constant(text)).numpy(), ids)
  assert vocab.decode_tf(tf.constant(ids)).numpy().decode() == text
  assert vocab.encode("é") == [2]  # unknown character -> UNK
  assert CharVocabulary("ba") == CharVocabulary("ab")


def test_nanogpt_split():
  splits = tasks.split_text(tasks.shakespeare_text(), 0.9)
  assert len(tasks.shakespeare_text()) == 1_115_394
  assert len(splits["train"]) == 1_003_854 and splits["validation"].startswith("?")


def test_continuous_windows_shift_by_one_and_come_from_their_split():
  cfg = InputConfig(batch_size=4, seq_len=16, continuous=True)
  batch = next(make_batches(cfg, "validation"))
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  assert batch["weights"].min() == 1 and batch["inputs"].shape == (4, 16)
  vocab = vocabulary(cfg.task)
  val = tasks.split_text(tasks.shakespeare_text(), 0.9)["validation"]
  for row in batch["inputs"]:
    assert vocab.decode(row.tolist()) in val


def test_batches_are_deterministic_resumable_and_shard_invariant():
  cfg = InputConfig(batch_size=4, seq_len=16, continuous=True, seed=3, num_shards=2)
  first = [next(it) for it in [make_batches(cfg, "train")] for _ in range(3)]
  again = make_batches(cfg, "train")
  np.testing.assert_array_equal(next(again)["inputs"], first[0]["inputs"])
  resumed = make_batches(cfg, "train", start=2)
  np.testing.assert_array_equal(next(resumed)["inputs"], first[2]["inputs"])
  other_seed = next(make_batches(InputConfig(batch_size=4, seq_len=16, continuous=True,
                                             seed=4, num_shards=2), "train"))
  assert not np.array_equal(other_seed["inputs"], first[0]["inputs"])
  # The two shards' rows are different windows, each half of the batch.
  assert not np.array_equal(first[0]["inputs"][:2], first[0]["inputs"][2:])


def test_spm_task_trains_from_train_split_and_round_trips():
  vocab = vocabulary("tiny_shakespeare_spm")
  assert vocab.vocab_size == 1024
  text = "First Citizen:\nBefore we proceed any further, hear me speak."
  assert vocab.decode(vocab.encode(text)) == text
  batch = next(make_batches(InputConfig(task="tiny_shakespeare_spm", batch_size=2, seq_len=32,
                                        continuous=True), "train"))
  assert batch["inputs"].max() < 1024 and batch["inputs"].shape == (2, 32)


def test_jsonl_task_packs_documents_with_eos(tmp_path):
  docs = [{"text": "a" * n, "id": n} for n in (5, 7, 40, 3)]
  path = tmp_path / "docs.jsonl"
  path.write_text("\n".join(json.dumps(d) for d in docs))
  vocab = tasks.shakespeare_char_vocabulary()
  name = tasks.register_files_task("jsonl_test", {"train": str(path)}, vocab, "jsonl")
  batch = next(make_batches(InputConfig(task=name, batch_size=2, seq_len=16, pack=True),
                            "train"))
  assert set(batch) == {"inputs", "targets", "weights", "segment_ids", "positions"}
  # 5+1, 7+1, 3+1 tokens and the 41-token document cut into 16,16,9: all tokens present.
  tokens = batch["targets"][batch["weights"] > 0]
  assert (tokens == vocab.eos_id).sum() >= 2
  for row_seg, row_pos in zip(batch["segment_ids"], batch["positions"]):
    for seg in set(row_seg[row_seg > 0]):
      np.testing.assert_array_equal(row_pos[row_seg == seg], np.arange((row_seg == seg).sum()))


def test_bad_jsonl_record_is_reported(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
  from lm.errors import UserError
  with pytest.raises(UserError, match="bad.jsonl:2"):
    list(tasks._read_documents([str(path)], "jsonl", "text"))


class TinyLmTestText(tfds.core.GeneratorBasedBuilder):
  """A 2-split text dataset built locally by the test (no download)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self,
                                 features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(20), "validation": self._generate_examples(4)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"text": f"Line {i}: to be, or not to be, that is the question."}


def test_tfds_task_reads_a_locally_built_dataset(tmp_path):
  builder = TinyLmTestText(data_dir=str(tmp_path))
  builder.download_and_prepare()
  name = tasks.register_tfds_task("tfds_test", "tiny_lm_test_text:1.0.0", tasks.shakespeare_char_vocabulary(),
                                  data_dir=str(tmp_path))
  assert name in seqio.TaskRegistry.names()
  batch = next(make_batches(InputConfig(task=name, batch_size=2, seq_len=64), "validation"))
  vocab = tasks.shakespeare_char_vocabulary()
  first = batch["targets"][0][batch["segment_ids"][0] == 1]
  assert vocab.decode(first.tolist()).startswith("Line ")
