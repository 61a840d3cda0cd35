"""A prepared directory as a SeqIO task, and lm-train on it."""

import json
import os

import pytest

from conftest import REPO
from lm.cli import prep as cli
from lm.data.prep import synthetic

VOCAB = 320


def test_seqio_tensorflow_and_beam_import_together():
  # apache-beam caps protobuf below 7; sentencepiece 0.2.3 needs >= 7.
  import apache_beam
  import seqio
  import sentencepiece
  import tensorflow
  assert sentencepiece.__version__ < "0.2.2"
  assert seqio.SentencePieceVocabulary and tensorflow.constant(1) == 1
  assert apache_beam.__version__


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("prepared")
  corpus = synthetic.make_corpus(300, 5, 5, seed=3, words=(100, 200))
  synthetic.write_jsonl(corpus.docs, str(root / "in"), 2)
  assert cli.main(["--input", f"{root}/in/*.jsonl.gz", "--output_dir",
                   f"{root}/out", "--num_workers", "1", "--spm_vocab_size",
                   str(VOCAB), "--validation_fraction", "0.1"]) == 0
  return root / "out"


def test_spm_model_and_token_counts(prepared):
  report = json.loads((prepared / "report.json").read_text())
  assert (prepared / "spm.model").exists()
  splits = report["output"]["splits"]
  assert splits["train"]["spm_tokens"] > splits["train"]["docs"] * 50
  assert splits["validation"]["docs"] > 0


def _kept_texts(prepared):
  import gzip
  texts = []
  for name in sorted(os.listdir(prepared)):
    if name.startswith("data-"):
      with gzip.open(prepared / name, "rt", encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for line in f]
  return texts


def test_spm_model_is_lossless_on_the_prepared_corpus(prepared):
  import sentencepiece
  sp = sentencepiece.SentencePieceProcessor(model_file=str(prepared / "spm.model"))
  texts = _kept_texts(prepared)
  assert sum("\n" in t for t in texts) == len(texts)  # the corpus has line structure
  spaced = "  " + texts[0].replace(" ", "   ", 5).replace("\n", "\n\n\n ") + "\n"
  for text in texts + [spaced]:
    assert sp.decode(sp.encode(text)) == text


def test_registered_task_reads_each_split(prepared):
  import seqio
  from lm.data.prep.task import register_prepared_task
  report = json.loads((prepared / "report.json").read_text())
  name = register_prepared_task("prep_test_split", str(prepared))
  task = seqio.get_mixture_or_task(name)
  for split in ("train", "validation"):
    examples = list(task.get_dataset({"targets": 4096}, split=split,
                                     shuffle=False).as_numpy_iterator())
    assert len(examples) == report["output"]["splits"][split]["docs"]
    assert all(ex["targets"][-1] == 1 for ex in examples)  # EOS appended.
  text = task.output_features["targets"].vocabulary.decode(
      examples[0]["targets"][:-1].tolist())
  assert len(text.split()) >= 50


def _doc_texts(prepared):
  """{id: text} of every kept document."""
  import gzip
  docs = {}
  for name in sorted(os.listdir(prepared)):
    if name.startswith("data-"):
      with gzip.open(prepared / name, "rt", encoding="utf-8") as f:
        docs.update((r["id"], r["text"]) for r in map(json.loads, f))
  return docs


def test_every_token_of_every_train_document_is_trained_on(prepared):
  import numpy as np
  import seqio
  import sentencepiece
  from lm.data.prep import splits
  from lm.data.prep.task import register_prepared_task
  name = register_prepared_task("prep_test_all_tokens", str(prepared))
  report = json.loads((prepared / "report.json").read_text())
  sp = sentencepiece.SentencePieceProcessor(model_file=str(prepared / "spm.model"))
  train = [t for i, t in _doc_texts(prepared).items()
           if splits.split_of(i, report["config"]["validation_fraction"]) == "train"]
  expected = sum(len(sp.encode(t)) + 1 for t in train)  # each document and its EOS
  assert expected > 16 * len(train)  # documents are longer than one row
  ds = seqio.get_dataset(name, {"targets": 16}, seqio.DecoderFeatureConverter(pack=True),
                         dataset_split="train", shuffle=False, num_epochs=1)
  trained = sum(int(np.sum(ex["decoder_loss_weights"] > 0)) for ex in ds.as_numpy_iterator())
  assert trained == expected


@pytest.mark.parametrize("remove,message", [
    ("report.json", "report.json is missing"),
    ("spm.model", "no vocabulary: .*spm.model does not exist"),
    ("data-*", "holds no data-\\*.jsonl.gz"),
    ("*", "is not a directory"),
])
def test_bad_prepared_directory_is_a_user_error(prepared, tmp_path, remove, message):
  import glob
  import shutil
  from lm.data.prep.task import register_prepared_task
  from lm.errors import UserError
  copy = tmp_path / "prepared"
  shutil.copytree(prepared, copy)
  if remove == "*":
    shutil.rmtree(copy)
  for path in glob.glob(str(copy / remove)):
    os.remove(path)
  with pytest.raises(UserError, match=message):
    register_prepared_task("prep_test_bad_dir", str(copy))


def test_lm_train_runs_on_the_prepared_task(prepared, tmp_path):
  from lm.cli import train
  gin_file = tmp_path / "prepared.gin"
  gin_file.write_text(f"""
import lm.data.prep.task
include '{REPO}/gin_configs/runs/pretrain.gin'
include '{REPO}/gin_configs/models/nano.gin'
TASK = @prepared/register_prepared_task()
prepared/register_prepared_task.name = 'prep_test_train'
prepared/register_prepared_task.data_dir = '{prepared}'
ModelConfig.vocab_size = {VOCAB}
TRAIN_STEPS = 3
BATCH_SIZE = 8
SEQ_LEN = 32
LOG_EVERY = 1
EVAL_EVERY = 3
EVAL_STEPS = 1
CHECKPOINT_EVERY = 3
""")
  with pytest.raises(SystemExit) as exit_info:
    train.main([f"--gin_file={gin_file}", f"--model_dir={tmp_path}/run"])
  assert exit_info.value.code in (0, None)
  assert os.listdir(tmp_path / "run")
