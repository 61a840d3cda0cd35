"""Instruction tasks: chat templates, loss weights exactly on the assistant's tokens and EOS,
packing that keeps examples whole and apart, overlong examples dropped or truncated. (What a
run trains on against what it is prompted with: tests/test_start_rule.py.)"""
import json
import os

import gin
import numpy as np
import pytest
import seqio

from helpers import llama3_tokenizer_dir
from lm.data import chat_templates
from lm.data.inputs import InputConfig
from lm.data.instruct import overlong_counts, register_instruct_task, tokenize_conversation
from lm.data.pipeline import SeqioBatches
from lm.data.tasks import shakespeare_char_vocabulary
from lm.data.vocabularies import model_vocabulary
from lm.errors import UserError

# Meta's Llama 3 Instruct chat template (tokenizer_config.json of Meta-Llama-3-8B-Instruct).
LLAMA3_JINJA = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name?"},
        {"role": "assistant", "content": " Bob "}]
START = [0]  # what a char-vocabulary run's sequences start with (its start.json)


def char_vocab():
  return shakespeare_char_vocabulary()


def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def test_plain_prompt_response_weights_are_the_response_and_eos():
  vocab = char_vocab()
  ids, weights = tokenize_conversation(
      chat_templates.record_messages({"prompt": "Hi", "response": "Yo."}), vocab)
  prompt = "User: Hi\nAssistant: "  # one id per character
  assert ids == START + list(vocab.encode(prompt)) + list(vocab.encode("Yo.")) + [vocab.eos_id]
  assert weights == [0] * (1 + len(prompt)) + [1, 1, 1, 1]


def test_plain_chat_weights_every_assistant_turn_and_its_eos():
  vocab = char_vocab()
  ids, weights = tokenize_conversation(CHAT, vocab, "plain")
  assert ids[:1] == START and weights[0] == 0
  ids, weights = ids[1:], weights[1:]
  text = "".join(vocab.decode([i]) if i != vocab.eos_id else "|" for i in ids)
  assert text == ("Be brief.\n\nUser: Hi there\nAssistant: Hello!|\nUser: Name?\n"
                  "Assistant:  Bob |")
  trained = "".join(c for c, w in zip(text, weights) if w)
  assert trained == "Hello!| Bob |"
  completion, w = tokenize_conversation(CHAT[1:3], vocab, "completion")
  assert completion == START + list(vocab.encode("Hi thereHello!")) + [vocab.eos_id]
  assert w == [0] * 9 + [1] * 7


@pytest.fixture(scope="module")
def llama3_model_dir(tmp_path_factory):
  """A model directory with a tiny BPE tokenizer holding Llama 3's special tokens and Meta's
  chat template (as a Llama 3 import has it)."""
  transformers = pytest.importorskip("transformers")
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  backend = Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
  backend.train_from_iterator(["Hello there, be brief. Name? Bob"] * 10, trainers.BpeTrainer(
      vocab_size=300, special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
      chat_template=LLAMA3_JINJA)
  model_dir = tmp_path_factory.mktemp("llama3")
  tok.save_pretrained(str(model_dir / "tokenizer"))
  return str(model_dir), tok


def test_llama3_template_is_the_official_format(llama3_model_dir):
  model_dir, reference = llama3_model_dir
  segments = chat_templates.render(CHAT, "llama3")
  text = "".join(piece for piece, _ in segments)
  assert text == (
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nName?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\nBob<|eot_id|>")
  assert text == reference.apply_chat_template(CHAT, tokenize=False)
  assert [p for p, trains in segments if trains] == ["Hello!<|eot_id|>", "Bob<|eot_id|>"]
  # Through the tokenizer: the same ids as transformers; template "model" (Meta's jinja, turn
  # by turn) gives the same ids and weights as the built-in one.
  vocab = model_vocabulary(model_dir)
  ids, weights = tokenize_conversation(CHAT, vocab, "llama3")
  assert ids == reference.encode(text, add_special_tokens=False)  # the whole text's ids
  assert tokenize_conversation(CHAT, vocab, "model") == (ids, weights)
  eot = reference.convert_tokens_to_ids("<|eot_id|>")
  trained = [i for i, w in zip(ids, weights) if w]
  assert trained == (reference.encode("Hello!", add_special_tokens=False) + [eot] +
                     reference.encode("Bob", add_special_tokens=False) + [eot])


def test_a_tuned_run_stops_where_its_turns_end(tmp_path):
  """SFT from a Llama 3 base import (EOS <|end_of_text|>) with the llama3 template: the run
  keeps the import's generation_config.json and adds <|eot_id|>, the token its assistant turns
  were trained to end with, so that lm.load stops there."""
  from lm.model_dir import eos_ids
  from lm.models.config import ModelConfig
  from lm.tokenizers import load_tokenizer
  from lm.training.optimizers import OptimizerConfig
  from lm.training.run_dir import run_settings, write_run_files
  base = llama3_tokenizer_dir(tmp_path / "llama3_base", eos="<|end_of_text|>")
  with open(os.path.join(base, "generation_config.json"), "w") as f:
    json.dump({"bos_token_id": 0, "eos_token_id": 1, "temperature": 0.6}, f)
  name = register_instruct_task("instruct_llama3_eot", {"train": write_jsonl(
      tmp_path / "t.jsonl", [{"messages": CHAT}])}, model_vocabulary(base), "llama3")
  cfg = InputConfig(task=name, batch_size=1, seq_len=64)
  run = str(tmp_path / "run")
  write_run_files(run, ModelConfig(vocab_size=300, max_len=64), name,
                  run_settings(cfg, OptimizerConfig(), 1), 1, None)
  with open(os.path.join(run, "generation_config.json")) as f:
    assert json.load(f) == {"bos_token_id": 0, "eos_token_id": [1, 2], "temperature": 0.6}
  assert eos_ids(run, load_tokenizer(run)) == (1, 2)  # <|end_of_text|>, <|eot_id|>


def test_model_template_of_an_hf_import(tmp_path):
  from test_tokenizers import hf_tokenizer
  reference = hf_tokenizer()  # "[role] content</s>\n" per message
  reference.save_pretrained(str(tmp_path / "tokenizer"))
  ids, weights = tokenize_conversation(CHAT, model_vocabulary(str(tmp_path)), "model")
  assert reference.decode(ids) == reference.apply_chat_template(CHAT, tokenize=False)
  trained = [i for i, w in zip(ids, weights) if w]
  enc = lambda s: reference.encode(s, add_special_tokens=False)
  assert trained == enc("Hello!") + [1] + enc(" Bob ") + [1]


def test_template_errors_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="no single token for <\\|begin_of_text\\|>"):
    register_instruct_task("instruct_bad", {"train": write_jsonl(
        tmp_path / "a.jsonl", [{"prompt": "a", "response": "b"}])}, char_vocab(), "llama3")
  with pytest.raises(UserError, match="model_vocabulary of an HF import"):
    tokenize_conversation(CHAT, char_vocab(), "model")
  bad = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "a"}])
  with pytest.raises(UserError, match="b.jsonl:2: neither"):
    register_instruct_task("instruct_bad", {"train": bad}, char_vocab())
  bad = write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT[:2]}])
  with pytest.raises(UserError, match="c.jsonl:1: .*end with an assistant"):
    register_instruct_task("instruct_bad", {"train": bad}, char_vocab())
  with pytest.raises(UserError, match="unknown chat template"):
    register_instruct_task("instruct_bad", {"train": bad}, char_vocab(), "chatml")


RECORDS = [{"prompt": "a" * n, "response": "b" * m} for n, m in
           [(1, 2), (3, 1), (2, 5), (6, 3), (1, 1), (4, 4), (2, 2), (5, 1)]]


def read_rows(task, seq_len, batch_size=4, pack=True, split="train"):
  cfg = InputConfig(task=task, batch_size=batch_size, seq_len=seq_len, pack=pack)
  batches = SeqioBatches(cfg, split, shuffle=False, seed=0, num_epochs=1)
  rows = []
  for batch in batches:
    rows += [{k: v[r] for k, v in batch.items()} for r in range(len(batch["targets"]))]
  return rows


def examples_of(rows):
  """(ids, weights) of the whole example in every packed segment (its first input, then its
  targets; the first token has no weight), checking positions and shifted inputs."""
  found = []
  for row in rows:
    for s in sorted(set(row["segment_ids"].tolist()) - {0}):
      at = row["segment_ids"] == s
      assert np.flatnonzero(at).tolist() == list(range(np.argmax(at), np.argmax(at) + at.sum()))
      inputs, targets, weights = row["inputs"][at], row["targets"][at], row["weights"][at]
      np.testing.assert_array_equal(row["positions"][at], np.arange(at.sum()))
      np.testing.assert_array_equal(inputs[1:], targets[:-1])
      found.append(([int(inputs[0])] + targets.tolist(), [0] + weights.tolist()))
    pad = row["segment_ids"] == 0
    assert not row["weights"][pad].any() and not row["targets"][pad].any()
  return sorted(found)


def test_packed_batches_keep_examples_whole_apart_and_masked(tmp_path):
  vocab = char_vocab()
  name = register_instruct_task(
      "instruct_pack", {"train": write_jsonl(tmp_path / "t.jsonl", RECORDS)}, vocab)
  expected = sorted(tokenize_conversation(chat_templates.record_messages(r), vocab)
                    for r in RECORDS)
  rows = read_rows(name, seq_len=64)
  assert sum(r["targets"].any() for r in rows) <= len(RECORDS) // 2  # examples share rows
  assert examples_of(rows) == expected
  unpacked = read_rows(name, seq_len=64, pack=False)
  assert sorted(([int(r["inputs"][0])] + r["targets"][r["targets"] > 0].tolist(),
                 [0] + r["weights"][r["targets"] > 0].tolist())
                for r in unpacked if r["targets"].any()) == expected


def test_overlong_examples_are_dropped_or_truncated(tmp_path, capsys):
  vocab = char_vocab()
  path = write_jsonl(tmp_path / "t.jsonl", RECORDS)
  full = [tokenize_conversation(chat_templates.record_messages(r), vocab) for r in RECORDS]
  # start + "User: \nAssistant: " + prompt + response + EOS
  lengths = [len(ids) for ids, _ in full]
  assert lengths == [1 + 18 + len(r["prompt"]) + len(r["response"]) + 1 for r in RECORDS]
  seq_len = 25  # positions: an example of n tokens fills n - 1
  assert sum(n > seq_len + 1 for n in lengths) == 3
  name = register_instruct_task("instruct_drop", {"train": path}, vocab)
  rows = read_rows(name, seq_len)
  # A printed line: lm-train's quiet start hides library WARNING logs.
  assert "note: task instruct_drop split train: 3 of 8 examples are longer than 26 tokens: " \
      "dropped\n" in capsys.readouterr().out
  assert examples_of(rows) == sorted(e for e, n in zip(full, lengths) if n <= seq_len + 1)
  assert overlong_counts({"train": np.array(lengths)}, seq_len + 1) == {"train": (3, 8)}

  # Truncated: the first SEQ_LEN + 1 ids and weights; one whose response starts past them goes.
  records = RECORDS + [{"prompt": "a" * 30, "response": "b"}]
  path = write_jsonl(tmp_path / "u.jsonl", records)
  name = register_instruct_task("instruct_trunc", {"train": path}, vocab, overlong="truncate")
  full = [tokenize_conversation(chat_templates.record_messages(r), vocab) for r in records]
  cut = [(ids[:seq_len + 1], w[:seq_len + 1]) for ids, w in full if any(w[:seq_len + 1])]
  assert len(cut) == len(records) - 1
  assert examples_of(read_rows(name, seq_len)) == sorted(cut)
  assert "note: task instruct_trunc split train: 4 of 9 examples are longer than 26 tokens: " \
      "truncated\n" in capsys.readouterr().out


def test_instruct_task_from_gin_trains_on_weights(tmp_path):
  """Bound in gin as an InputConfig task; eval batches hold weights only on response tokens."""
  path = write_jsonl(tmp_path / "v.jsonl", RECORDS)
  gin.parse_config([
      "register_instruct_task.name = 'instruct_gin'",
      f"register_instruct_task.split_patterns = {{'train': '{path}', 'validation': '{path}'}}",
      "register_instruct_task.vocabulary = @shakespeare_char_vocabulary()",
      "register_instruct_task.template = 'plain'",
      "InputConfig.task = @register_instruct_task()"])
  cfg = InputConfig(batch_size=2, seq_len=64)
  assert cfg.task == "instruct_gin" and "instruct_gin" in seqio.TaskRegistry.names()
  rows = read_rows(cfg.task, 64, split="validation")
  weights = sum(int(r["weights"].sum()) for r in rows)
  assert weights == sum(len(r["response"]) + 1 for r in RECORDS)


def test_token_id_zero_survives_packing(tmp_path):
  """In an HF vocabulary id 0 is a real token (here the BOS "<s>" the template writes, and one
  inside a text); seqio's packer would take it for padding. Instruction and files tasks in such
  a vocabulary keep it, with its weight."""
  from lm.data.tasks import register_files_task
  from test_tokenizers import hf_tokenizer
  hf_tokenizer().save_pretrained(str(tmp_path / "tokenizer"))
  vocab = model_vocabulary(str(tmp_path))
  records = [{"messages": CHAT}, {"prompt": "Hi 🙂", "response": "two  spaces"}]
  name = register_instruct_task(
      "instruct_zero", {"train": write_jsonl(tmp_path / "t.jsonl", records)}, vocab, "model")
  expected = sorted(tokenize_conversation(chat_templates.record_messages(r), vocab, "model")
                    for r in records)
  assert all(ids[0] == 0 for ids, _ in expected)
  assert examples_of(read_rows(name, seq_len=128, batch_size=1)) == expected

  text = "ROMEO: <s> inside"
  name = register_files_task("files_zero", {"train": write_jsonl(
      tmp_path / "f.jsonl", [{"text": text}] * 3)}, vocab, file_format="jsonl")
  ids = list(vocab.encode(text)) + [vocab.eos_id]  # this tokenizer adds no BOS: no start ids
  assert 0 in ids
  assert examples_of(read_rows(name, seq_len=64, batch_size=1)) == [
      (ids, [0] + [1] * (len(ids) - 1))] * 3


def test_instruct_gin_tokenizes_with_init_froms_tokenizer(trained_run, tmp_path):
  """gin_configs/runs/instruct.gin: the task is registered in INIT_FROM's own vocabulary (the
  run's character table) with the chosen template; no validation split when its pattern is ''."""
  from conftest import REPO
  from lm.cli.common import parse_gin
  from lm.data.inputs import make_batches
  path = write_jsonl(tmp_path / "t.jsonl", RECORDS)
  parse_gin([f"{REPO}/gin_configs/runs/instruct.gin"],
            [f"INIT_FROM = '{trained_run}'", f"INSTRUCT_TRAIN = '{path}'", "SEQ_LEN = 32",
             "CHAT_TEMPLATE = 'completion'"])
  cfg = InputConfig()
  assert cfg.task == "instruct" and seqio.get_mixture_or_task("instruct").source.splits == (
      "train",)
  batch = next(make_batches(cfg, "train"))
  vocab = char_vocab()  # what the trained run's tokenizer/chars.json holds
  expected = sorted(tokenize_conversation(chat_templates.record_messages(r), vocab, "completion")
                    for r in RECORDS)
  with pytest.raises(UserError, match="no 'validation' split: .*INSTRUCT_VALIDATION"):
    make_batches(cfg, "validation")
  found = examples_of([{k: v[r] for k, v in batch.items()} for r in range(len(batch["targets"]))])
  assert found and all(example in expected for example in found)


def test_instruct_reader_resumes_where_it_stopped(tmp_path):
  """The saved reader state (in every checkpoint) restores the exact next training batch."""
  name = register_instruct_task(
      "instruct_resume", {"train": write_jsonl(tmp_path / "t.jsonl", RECORDS)}, char_vocab())
  cfg = InputConfig(task=name, batch_size=2, seq_len=32, shuffle_buffer_size=4)
  first = SeqioBatches(cfg, "train", shuffle=True, seed=3)
  for _ in range(5):  # past one epoch of 8 examples
    next(first)
  resumed = SeqioBatches(cfg, "train", shuffle=True, seed=3, start=first.state)
  for _ in range(3):
    expected, got = next(first), next(resumed)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])
