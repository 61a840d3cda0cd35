"""lm.data.vocabularies.model_vocabulary: a SeqIO task tokenized with a model directory's own
tokenizer gives exactly that tokenizer's ids (HF tokenizer.json, char table, SentencePiece)."""
import json

import gin
import pytest
import seqio
import tensorflow as tf

from lm import tokenizers
from lm.data import tasks  # noqa: F401  (registers gin configurables)
from lm.data.tokenizer_export import save_task_tokenizer
from lm.data.vocabularies import CharVocabulary, TokenizerVocabulary, model_vocabulary
from lm.errors import UserError
from test_tokenizers import TEXTS, hf_tokenizer


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory):
  """A model directory holding only a small transformers tokenizer (as import-hf copies it)."""
  pytest.importorskip("transformers")
  model_dir = tmp_path_factory.mktemp("hf_model")
  hf_tokenizer().save_pretrained(str(model_dir / "tokenizer"))
  return str(model_dir)


def test_hf_vocabulary_ids_equal_the_tokenizers(hf_model_dir):
  reference = hf_tokenizer()
  vocab = model_vocabulary(hf_model_dir)
  assert isinstance(vocab, TokenizerVocabulary)
  assert (vocab.eos_id, vocab.bos_id, vocab.vocab_size) == (1, 0, len(reference))
  texts = TEXTS + ["<s>special</s> inside"]
  for text in texts:
    ids = reference.encode(text, add_special_tokens=False)
    assert list(vocab.encode(text)) == ids, text
    assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids, text
    upto_eos = ids[:ids.index(1) + 1] if 1 in ids else ids  # seqio's decode stops at EOS
    assert vocab.decode(ids) == reference.decode(upto_eos, skip_special_tokens=True)
  batch = tf.ragged.constant([reference.encode(t) for t in texts[:2]]).to_tensor()
  assert [t.decode() for t in vocab.decode_tf(batch).numpy()] == [
      reference.decode(reference.encode(t), skip_special_tokens=True) for t in texts[:2]]
  # Equal (so tasks of one model can be mixed) and cached per directory.
  assert model_vocabulary(hf_model_dir + "/") is vocab
  assert vocab == TokenizerVocabulary(hf_model_dir) != TokenizerVocabulary(hf_model_dir, True)
  with_bos = model_vocabulary(hf_model_dir, add_special_tokens=True)
  assert list(with_bos.encode("abc")) == reference.encode("abc")


def test_files_task_with_model_vocabulary_from_gin(hf_model_dir, tmp_path):
  """A files task bound in gin to an import's tokenizer: targets are its ids + EOS; a run
  trained on it saves that tokenizer (its files, as they are)."""
  texts = ["ROMEO: But soft!", "unicode: héllo 🙂"]
  (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  gin.parse_config([
      f"model_vocabulary.model_dir = '{hf_model_dir}'",
      "register_files_task.vocabulary = @model_vocabulary()",
      f"register_files_task.split_patterns = {{'train': '{tmp_path}/d.jsonl'}}",
      "register_files_task.file_format = 'jsonl'"])
  name = gin.get_configurable("register_files_task")(name="instruct_vocab_files")
  ds = seqio.get_mixture_or_task(name).get_dataset({"targets": 64}, split="train",
                                                   shuffle=False)
  got = sorted(ex["targets"].tolist() for ex in ds.as_numpy_iterator())
  reference = hf_tokenizer()
  assert got == sorted(reference.encode(t, add_special_tokens=False) + [1] for t in texts)
  save_task_tokenizer(name, str(tmp_path / "run"))
  saved = tokenizers.load_tokenizer(str(tmp_path / "run"))
  assert saved.encode(texts[1], add_special_tokens=False) == reference.encode(
      texts[1], add_special_tokens=False)
  assert saved.chat_template == reference.chat_template


def test_char_and_sentencepiece_directories_give_seqio_vocabularies(tmp_path):
  from lm.data.pipeline import vocabulary
  for task in ("tiny_shakespeare_char", "tiny_shakespeare_spm"):
    save_task_tokenizer(task, str(tmp_path / task))
    vocab = model_vocabulary(str(tmp_path / task))
    expected = vocabulary(task)
    assert isinstance(vocab, (CharVocabulary, seqio.SentencePieceVocabulary))
    for text in TEXTS:
      assert list(vocab.encode(text)) == list(expected.encode(text)), (task, text)
    assert vocab.vocab_size == expected.vocab_size


def test_a_directory_without_tokenizer_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="has no tokenizer"):
    model_vocabulary(str(tmp_path))
