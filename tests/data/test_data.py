"""SeqIO tasks and the input pipeline: vocabularies, splits, windows, packing, shards, resume."""
import dataclasses
import json
import time

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


@pytest.mark.parametrize("content,message", [
    ('{"text": "fine"}\n{"body": "no text field"}\n', "bad.jsonl:2: not a JSON object"),
    ('{"text": "fine"}\n\n{"text": "cut', "bad.jsonl:3: not JSON"),
    ('{"text": 7}\n', "bad.jsonl:1: not a JSON object with a string 'text'"),
    (b'{"text": "ok"}\n{"text": "\xff"}\n', "bad.jsonl:2: invalid UTF-8"),
    ("", "bad.jsonl: data file is empty"),
])
def test_bad_jsonl_file_fails_at_registration_naming_file_and_line(tmp_path, content, message):
  from lm.errors import UserError
  path = tmp_path / "bad.jsonl"
  (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
  with pytest.raises(UserError, match=message):
    tasks.register_files_task("bad_jsonl", {"train": str(path)},
                              tasks.shakespeare_char_vocabulary(), "jsonl")


def _files_task(tmp_path, name, num_files=6, docs_per_file=4, validation_docs=5):
  """Documents "aaa..", "bbb..", ... (file f's character), each shorter than one row."""
  for f in range(num_files):
    lines = [json.dumps({"text": "abcdefghij"[f] * (3 + i)}) for i in range(docs_per_file)]
    (tmp_path / f"train-{f}.jsonl").write_text("\n".join(lines) + "\n")
  (tmp_path / "val.jsonl").write_text("".join(
      json.dumps({"text": "z" * (2 + i)}) + "\n" for i in range(validation_docs)))
  (tmp_path / "empty.jsonl").write_text("\n")
  return tasks.register_files_task(
      name, {"train": str(tmp_path / "train-*.jsonl"), "validation": str(tmp_path / "val.jsonl"),
             "test": str(tmp_path / "empty.jsonl")}, tasks.shakespeare_char_vocabulary(), "jsonl")


def _origins(batches, n):
  """The file (character) each row of the next n batches comes from."""
  vocab = tasks.shakespeare_char_vocabulary()
  return "".join(vocab.decode([row[0]]) for _ in range(n) for row in next(batches)["targets"])


def test_files_are_shuffled_per_epoch_by_the_seed(tmp_path):
  name = _files_task(tmp_path, "shuffle_files_test")
  # buffer 1: the row order is the file order (6 files x 4 documents = 6 batches per epoch)
  cfg = InputConfig(task=name, batch_size=4, seq_len=16, pack=False, num_shards=1,
                    shuffle_buffer_size=1)
  runs = {seed: _origins(make_batches(dataclasses.replace(cfg, seed=seed), "train"), 12)
          for seed in (0, 1)}
  assert _origins(make_batches(cfg, "train"), 12) == runs[0]  # the same seed reproduces
  for seed, origins in runs.items():
    epochs = [origins[:24], origins[24:]]
    for epoch in epochs:  # each file's 4 documents in a row, every file once
      files = epoch[::4]
      assert sorted(files) == list("abcdef") and epoch == "".join(f * 4 for f in files)
    assert epochs[0][::4] != epochs[1][::4], seed  # a new file order every epoch
  assert runs[0][:24:4] != runs[1][:24:4]  # the seed picks the order
  assert runs[0][:24:4] != "abcdef"  # not the input order
  # the default buffer mixes files within a batch
  mixed = _origins(make_batches(dataclasses.replace(cfg, shuffle_buffer_size=10_000), "train"), 1)
  assert len(set(mixed)) > 1


def test_file_task_resumes_from_its_iterator_state(tmp_path):
  name = _files_task(tmp_path, "resume_files_test", docs_per_file=9)
  cfg = InputConfig(task=name, batch_size=4, seq_len=8, num_shards=2, shuffle_buffer_size=16)
  batches = make_batches(cfg, "train")
  for _ in range(11):
    next(batches)
  state = json.loads(json.dumps(batches.state))  # as the checkpoint stores it
  assert state["batches"] == 11 and set(state["iterators"]) == {"0", "1"}
  expected = [next(batches) for _ in range(19)]  # to about 4 epochs
  resumed = make_batches(cfg, "train")
  resumed.restore(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_corpus_resume_is_constant_time():
  cfg = InputConfig(batch_size=4, seq_len=16, continuous=True, seed=3, num_shards=2)
  seconds = []
  for start in (0, 100_000):  # replaying 100,000 batches takes about a minute
    begin = time.perf_counter()
    far = make_batches(cfg, "train", start=start)
    batch = next(far)
    seconds.append(time.perf_counter() - begin)
  assert seconds[1] < 2 * seconds[0] + 2, seconds
  assert far.state == {"batches": 100_001} and batch["inputs"].shape == (4, 16)
  again = make_batches(cfg, "train")
  again.restore(json.loads(json.dumps({"batches": 100_000})))
  np.testing.assert_array_equal(next(again)["inputs"], batch["inputs"])


def test_evaluation_reads_a_fixed_sample_once_and_ends(tmp_path):
  from lm.errors import UserError
  name = _files_task(tmp_path, "eval_files_test")
  cfg = InputConfig(task=name, batch_size=4, seq_len=16, pack=False, num_shards=2)
  first, second = list(make_batches(cfg, "validation")), list(make_batches(cfg, "validation"))
  # 5 documents: one full batch and one padded with 3 zero-weight rows, then the end
  assert len(first) == len(second) == 2
  assert [int((b["weights"].sum(axis=1) > 0).sum()) for b in first] == [4, 1]
  tokens = sum(int(b["weights"].sum()) for b in first)
  assert tokens == sum(2 + i + 1 for i in range(5))  # every document once, with its EOS
  for a, b in zip(first, second):  # a fixed sample
    np.testing.assert_array_equal(a["targets"], b["targets"])
  with pytest.raises(UserError, match="'test' of task 'eval_files_test' has no data"):
    make_batches(cfg, "test")


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
