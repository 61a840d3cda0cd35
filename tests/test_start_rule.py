"""The start rule (lm.tokenizers): what a run trains on (SFT's packed rows, DPO's pairs, document
pieces) is exactly what generation, scoring and lm-eval feed, and decodes to the rendered text,
for character, SentencePiece and HF vocabularies (byte-level BPE with and without a BOS its
post-processor adds, and a Metaspace one that, like SentencePiece, puts a space before a text)."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.api import LoadedModel
from lm.data.inputs import InputConfig
from lm.data.instruct import register_instruct_task
from lm.data.pipeline import SeqioBatches
from lm.data.tasks import register_files_task
from lm.data.tokenizer_export import save_task_tokenizer
from lm.data.vocabularies import model_vocabulary
from lm.finetuning.preference_data import encode_pairs
from lm.models.config import ModelConfig
from lm.models.transformer import Transformer
from lm.tokenizers import load_tokenizer

transformers = pytest.importorskip("transformers")

PROMPT, REPLY = "hi there", "Good day"
PLAIN_PROMPT = f"User: {PROMPT}\nAssistant: "  # what a plain-template run is prompted with
CHAT = [{"role": "user", "content": PROMPT}]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}"
            "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
KINDS = ("char", "spm", "hf", "hf_bos", "hf_metaspace")
SEQ_LEN = 48


def _hf_tokenizer_dir(path, metaspace: bool, add_bos: bool):
  """A small BPE tokenizer (<unk> 0, <s> 1, </s> 2) with a chat template, saved as
  transformers does: byte-level (GPT-2, Llama 3) or Metaspace (Llama 2's tokenizer.json)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  backend = Tokenizer(models.BPE(unk_token="<unk>"))
  if metaspace:
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    backend.decoder = decoders.Metaspace(prepend_scheme="first")
    alphabet = []
  else:
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
  text = f"{PLAIN_PROMPT}{REPLY}\n[user] [assistant] [system] Be brief. Bad day? ROMEO: But soft!"
  backend.train_from_iterator([text] * 20, trainers.BpeTrainer(
      vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet))
  if add_bos:
    backend.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                           special_tokens=[("<s>", 1)])
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
      chat_template=TEMPLATE).save_pretrained(str(path / "tokenizer"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """{kind: (model directory holding only a tokenizer, a random tiny LoadedModel with it)}.
  The char and SentencePiece directories are those of a run trained on documents (start.json)."""
  out = {}
  for kind in KINDS:
    path = tmp_path_factory.mktemp(kind)
    if kind in ("char", "spm"):
      save_task_tokenizer(f"tiny_shakespeare_{kind}", str(path), start_id=0)
    else:
      _hf_tokenizer_dir(path, metaspace=kind == "hf_metaspace", add_bos=kind == "hf_bos")
    tok = load_tokenizer(str(path))
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, num_layers=1, num_heads=2,
                      mlp_dim=64, max_len=64, init_std=0.5)
    params = nn.meta.unbox(Transformer(cfg).init(jax.random.PRNGKey(0),
                                                 jnp.zeros((1, 8), jnp.int32))["params"])
    out[kind] = str(path), LoadedModel(config=cfg, params=params, tokenizer=tok)
  return out


def _first_example(name):
  """(inputs, targets, weights) of the first example of a task's first packed row."""
  cfg = InputConfig(task=name, batch_size=1, seq_len=SEQ_LEN)
  batch = next(SeqioBatches(cfg, "train", shuffle=False, seed=0, num_epochs=1))
  at = batch["segment_ids"][0] == 1
  return tuple(batch[k][0][at].tolist() for k in ("inputs", "targets", "weights"))


def _logprobs(model, inputs, targets):
  """log p(targets[j] | inputs[:j + 1]), from one forward pass of `inputs`."""
  logits = np.asarray(model.logits([inputs]), np.float64)[0]
  top = logits.max(-1)
  logz = np.log(np.sum(np.exp(logits - top[:, None]), -1)) + top
  return logits[np.arange(len(targets)), targets] - logz


@pytest.mark.parametrize("kind,template", [(k, "plain") for k in KINDS] +
                         [(k, "model") for k in KINDS if k.startswith("hf")])
def test_sft_and_dpo_train_on_what_generation_feeds(kind, template, models, tmp_path):
  model_dir, model = models[kind]
  tok = model.tokenizer
  path = tmp_path / "sft.jsonl"
  path.write_text(json.dumps({"prompt": PROMPT, "response": REPLY}) + "\n")
  name = register_instruct_task(f"start_rule_{kind}_{template}", {"train": str(path)},
                                model_vocabulary(model_dir), template)
  inputs, targets, weights = _first_example(name)
  assert inputs[1:] == targets[:-1]
  sequence = inputs[:1] + targets
  # What generate() feeds for this prompt: a text prompt (plain), a chat (model).
  (prompt,), _ = model._prompt_ids([PLAIN_PROMPT if template == "plain" else CHAT])
  assert sequence[:len(prompt)] == prompt, (tok.decode(sequence[:len(prompt)]),
                                            tok.decode(prompt))
  end = len(weights) - weights[::-1].index(1)  # the model template leaves "\n" untrained
  assert weights[:len(prompt) - 1] == [0] * (len(prompt) - 1)
  assert weights[len(prompt) - 1:end] == [1] * (end - len(prompt) + 1)
  reply = sequence[len(prompt):end + 1]
  assert reply[-1] == tok.eos_id
  # No altered text (SentencePiece's and Metaspace's space before every encoded piece).
  if template == "plain":
    assert tok.decode(sequence) == PLAIN_PROMPT + REPLY
  else:
    full = CHAT + [{"role": "assistant", "content": REPLY}]
    assert tok.decode(sequence, skip_special_tokens=False) == tok.apply_chat_template(
        full, add_generation_prompt=False)
  # DPO's pair: the same prompt and reply ids.
  pairs, _ = encode_pairs(tok, [("pairs.jsonl:1", {"prompt": PROMPT, "chosen": REPLY,
                                                    "rejected": "Bad day"})], SEQ_LEN, template)
  assert (list(pairs[0].prompt), list(pairs[0].chosen)) == (prompt, reply)
  # The log-likelihood SFT trains on is the one scoring measures after generate's prompt.
  trained = float(np.sum(_logprobs(model, inputs, targets) * np.array(weights, bool)))
  assert model.score([prompt], [reply])[0][0] == pytest.approx(trained, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_scoring_conditions_on_what_generation_feeds(kind, models):
  """score, lm-eval's multiple-choice scoring and score_rolling condition a text on the start
  ids, as generate() does and training did."""
  _, model = models[kind]
  tok = model.tokenizer
  context, continuation = "hi there", "\nGood"  # split at a token boundary by every kind
  whole = tok.encode(context + continuation)  # the tokenizer's own convention (start ids)
  prompt = tok.encode(context)
  assert whole[:len(prompt)] == prompt
  (generated_from,), _ = model._prompt_ids([context])
  assert generated_from == prompt
  expected = float(np.sum(_logprobs(model, whole[:-1], whole[1:])[len(prompt) - 1:]))
  assert model.score([context], [continuation])[0][0] == pytest.approx(expected, rel=1e-5)
  (items_lls, _), = model.score_choices([[(context, continuation)]])
  assert items_lls[0] == pytest.approx(expected, rel=1e-5)
  # A whole text: every token scored after the start id (the prefix token without one).
  ids = tok.encode(context + continuation, add_special_tokens=False)
  assert prompt[:len(tok.start_ids)] == tok.start_ids and whole == tok.start_ids + ids
  rolled = float(np.sum(_logprobs(model, [tok.prefix_id] + ids[:-1], ids)))
  assert tok.prefix_id == (tok.start_ids or [tok.bos_id])[-1]
  assert model.score_rolling([context + continuation])[0] == pytest.approx(rolled, rel=1e-5)


@pytest.mark.parametrize("kind", ["hf", "hf_bos"])
def test_hf_documents_follow_the_tokenizers_own_start(kind, models, tmp_path):
  """A files task in an HF vocabulary: each piece starts with the tokenizer's start ids (its
  BOS, or nothing), never an invented id 0."""
  model_dir, model = models[kind]
  tok = model.tokenizer
  path = tmp_path / "docs.jsonl"
  path.write_text(json.dumps({"text": "ROMEO: But soft!"}) + "\n")
  name = register_files_task(f"start_rule_docs_{kind}", {"train": str(path)},
                             model_vocabulary(model_dir), file_format="jsonl")
  inputs, targets, weights = _first_example(name)
  ids = tok.encode("ROMEO: But soft!") + [tok.eos_id]  # as the tokenizer encodes a text
  assert inputs[:1] + targets == ids and inputs[1:] == targets[:-1]
  assert weights == [1] * len(targets)  # the start is an input only


@pytest.mark.parametrize("kind", KINDS)
def test_multi_turn_chats_decode_to_their_rendering(kind, models):
  """Every run of a longer chat (system text, two turns, text after an EOS) is encoded as the
  continuation of the text before it: nothing is added between them."""
  from lm.data.instruct import tokenize_conversation
  model_dir, model = models[kind]
  tok = model.tokenizer
  chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"},
          {"role": "assistant", "content": "Good day"}, {"role": "user", "content": "ROMEO?"},
          {"role": "assistant", "content": " But soft! "}]
  vocab = model_vocabulary(model_dir)
  ids, _ = tokenize_conversation(chat, vocab, "plain")
  assert tok.decode(ids) == ("Be brief.\n\nUser: hi there\nAssistant: Good day\nUser: ROMEO?\n"
                             "Assistant:  But soft! ")
  if kind.startswith("hf"):
    ids, _ = tokenize_conversation(chat, vocab, "model")
    assert tok.decode(ids, skip_special_tokens=False) == tok.apply_chat_template(
        chat, add_generation_prompt=False)
  # A reply with nothing before it (an empty completion prompt) follows the prefix token, as
  # an empty scoring context does.
  ids, weights = tokenize_conversation([{"role": "assistant", "content": "Good day"}], vocab,
                                       "completion")
  assert ids[0] == tok.prefix_id and weights[0] == 0 and all(weights[1:])
