"""lm.tokenizers: saved tokenizers give exactly the ids of the SeqIO vocabularies used in training,
and HF tokenizer files load and render chat templates as transformers does."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import sentencepiece as spm

from lm import tokenizers
from lm.data.pipeline import vocabulary
from lm.data.tokenizer_export import save_task_tokenizer
from lm.data.vocabularies import train_sentencepiece
from lm.errors import UserError

TEXTS = ["ROMEO:\nBut soft, what light through yonder window breaks?",
         "  two  spaces,\ttabs\t and\n\nblank lines ",
         "digits 0123456789 and 3.14159, punctuation !?;:'\"-",
         "unicode: héllo wörld, 日本語, emoji 🙂, Ωmega",
         "def f(x):\n    return x ** 2  # code\n", "", "Z"]


@pytest.mark.parametrize("task", ["tiny_shakespeare_char", "tiny_shakespeare_spm"])
def test_saved_task_tokenizer_gives_the_seqio_ids(task, tmp_path):
  vocab = vocabulary(task)
  assert save_task_tokenizer(task, str(tmp_path)) == str(tmp_path / "tokenizer")
  tok = tokenizers.load_tokenizer(str(tmp_path))
  assert tok.vocab_size == vocab.vocab_size
  assert (tok.eos_id, tok.bos_id) == (vocab.eos_id, None)
  for text in TEXTS:
    ids = list(vocab.encode(text))
    assert tok.encode(text) == ids, text
    assert tok.decode(ids) == vocab.decode(ids), text
  ids = list(range(vocab.vocab_size)) + [vocab.vocab_size + 5]  # every id, and one past the end
  ids.remove(vocab.eos_id)  # seqio's decode stops at EOS
  assert tok.decode(ids) == vocab.decode(ids)
  # Saving again (a resumed run) replaces the directory whole.
  save_task_tokenizer(task, str(tmp_path))
  assert len(os.listdir(tmp_path)) == 1


def test_document_run_tokenizer_starts_prompts_as_training_did(tmp_path):
  """seqio's decoder inputs start every packed document with one id: a document-task run saves
  it as its BOS, which generation prepends (a corpus-window run has none)."""
  from lm.data.inputs import InputConfig, make_batches
  from lm.training.run_dir import run_settings, write_run_files
  from lm.models.config import ModelConfig
  from lm.training.optimizers import OptimizerConfig
  cfg = InputConfig(task="tiny_shakespeare_char", batch_size=2, seq_len=32)
  batch = next(make_batches(cfg, "train"))
  starts = batch["positions"] == 0  # the first input of each packed document
  for continuous, run in ((False, "doc"), (True, "corpus")):
    settings = run_settings(dataclasses.replace(cfg, continuous=continuous), OptimizerConfig(), 1)
    write_run_files(str(tmp_path / run), ModelConfig(vocab_size=68, max_len=32),
                    cfg.task, settings, 1, None)
  tok = tokenizers.load_tokenizer(str(tmp_path / "doc"))
  assert set(batch["inputs"][starts].tolist()) == {tok.bos_id}
  ids = tokenizers.load_tokenizer(str(tmp_path / "corpus")).encode("ROMEO:")
  assert tok.encode("ROMEO:") == [tok.bos_id] + ids
  assert tok.encode("ROMEO:", add_special_tokens=False) == ids
  assert tokenizers.load_tokenizer(str(tmp_path / "corpus")).bos_id is None


def test_sentencepiece_with_bos_keeps_the_models_ids(tmp_path):
  """A model with BOS (not seqio's usual pad/eos/unk layout) keeps its own conventions."""
  prefix = str(tmp_path / "m")
  spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS * 20), model_prefix=prefix,
                                 vocab_size=80, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                 minloglevel=2)
  os.makedirs(tmp_path / "run" / "tokenizer")
  os.replace(prefix + ".model", tmp_path / "run" / "tokenizer" / "spm.model")
  tok = tokenizers.load_tokenizer(str(tmp_path / "run"))
  reference = spm.SentencePieceProcessor(model_file=str(tmp_path / "run/tokenizer/spm.model"))
  assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 80)
  assert tok.encode(TEXTS[0]) == reference.EncodeAsIds(TEXTS[0])


def test_no_tokenizer_is_none(tmp_path):
  assert tokenizers.load_tokenizer(str(tmp_path)) is None
  with pytest.raises(UserError, match="no chat template"):
    tokenizers.CharTokenizer("ab").apply_chat_template([{"role": "user", "content": "a"}])


@pytest.mark.slow
def test_tokenizers_and_conversion_import_without_tensorflow():
  code = ("import sys; sys.modules['tensorflow'] = None; sys.modules['seqio'] = None\n"
          "import lm.convert.gguf_import, lm.convert.hf_dirs\n"
          "from lm import tokenizers; print(tokenizers.CharTokenizer('ba').encode('abc'))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[3, 4, 2]"


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🙂"}]


def hf_tokenizer():
  """A small byte-level BPE transformers tokenizer (<s> = 0, </s> = 1) with a chat template."""
  import transformers  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  backend = Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  backend.train_from_iterator(TEXTS * 10, trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<s>", "</s>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}"
              "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
  return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>",
                                              eos_token="</s>", chat_template=template)


def test_hf_tokenizer_matches_transformers(tmp_path):
  """A byte-level BPE tokenizer.json with a chat template: ids, decoding, special tokens and
  the rendered chat equal transformers' (the files as save_pretrained writes them)."""
  pytest.importorskip("transformers")
  reference = hf_tokenizer()
  reference.save_pretrained(str(tmp_path / "tokenizer"))
  tok = tokenizers.load_tokenizer(str(tmp_path))
  assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, len(reference))
  for text in TEXTS + ["<s>special</s> inside"]:
    ids = tok.encode(text)
    assert ids == reference.encode(text), text
    assert tok.decode(ids) == reference.decode(ids, skip_special_tokens=True)
  for gen in (True, False):
    assert tok.apply_chat_template(CHAT, gen) == reference.apply_chat_template(
        CHAT, tokenize=False, add_generation_prompt=gen)
  with open(tmp_path / "tokenizer" / "tokenizer_config.json") as f:
    assert "chat_template" in json.load(f) or os.path.exists(
        tmp_path / "tokenizer" / "chat_template.jinja")
