"""Helpers that test files in different directories share."""
import hashlib
import os

import pytest

from lm.cli import train


def snapshot(model_dir):
  """{relative path: sha256} of every file under model_dir (to prove a run left it as it was)."""
  out = {}
  for root, _, files in os.walk(model_dir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, model_dir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def train_fails(argv, capsys, message):
  """lm-train on argv exits 2 with one error line containing message, and no traceback."""
  with pytest.raises(SystemExit) as exit_info:
    train.main(argv)
  err = capsys.readouterr().err
  assert exit_info.value.code == 2
  assert message in err and "Traceback" not in err
  assert len(err.strip().splitlines()) == 1, err


def llama3_tokenizer_dir(model_dir, eos: str) -> str:
  """A model directory holding a tiny BPE tokenizer with Llama 3's special tokens
  (<|begin_of_text|> 0, <|end_of_text|> 1, <|eot_id|> 2, the headers) and EOS `eos`."""
  transformers = pytest.importorskip("transformers")
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  backend = Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
              "<|end_header_id|>"]
  backend.train_from_iterator(["Hello there, be brief. Name? Bob"] * 10, trainers.BpeTrainer(
      vocab_size=300, special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, bos_token="<|begin_of_text|>",
      eos_token=eos).save_pretrained(str(model_dir / "tokenizer"))
  return str(model_dir)
