"""Decoding and scoring against transformers: random-weight HF GPT-2 and Llama (GQA, llama3
rope scaling) imported with lm-convert; greedy tokens equal HF generate's, scores equal the
summed log-softmax of HF's logits (float32, <= 1e-4)."""
import os

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import lm  # noqa: E402
from lm.cli import convert, sample  # noqa: E402
from test_tokenizers import CHAT, hf_tokenizer  # noqa: E402

VOCAB, TOL = 320, 1e-4  # >= the test tokenizer's 300 ids
HF_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB,
                                            n_positions=64, bos_token_id=None,
                                            eos_token_id=None),
    "llama": lambda: transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=VOCAB, tie_word_embeddings=False,
        rope_theta=500000.0, max_position_embeddings=64,
        # original_max_position_embeddings=8 puts the test's frequencies in all three bands.
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
}
RAGGED = [[5, 17, 3, 44, 9, 81, 2], [60, 1, 33], [12, 70, 70, 8, 21]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """{name: (HF model, lm model loaded from the lm-convert import, its directory)}.

  Weights are scaled up from HF's 0.02-std init (embeddings less than the rest) so that logits
  differ by O(1) between tokens and greedy paths are varied rather than one repeated token."""
  torch.manual_seed(0)
  out = {}
  for name, make_config in HF_CONFIGS.items():
    hf = transformers.AutoModelForCausalLM.from_config(make_config()).eval()
    for pname, p in hf.named_parameters():
      if p.ndim == 1 and "bias" not in pname:  # norm scales
        p.data.normal_(1.0, 0.1)
      else:
        p.data.normal_(0.0, 0.05 if any(e in pname for e in ("wte", "wpe", "embed")) else 0.3)
    hf_dir, lm_dir = (str(tmp_path_factory.mktemp(name + s)) for s in ("_hf", "_lm"))
    hf.save_pretrained(hf_dir)
    if name == "gpt2":  # an HF tokenizer with a chat template, which import-hf copies
      hf_tokenizer().save_pretrained(hf_dir)
    with pytest.raises(SystemExit) as exit_info:
      convert.main(["import-hf", "--hf_dir", hf_dir, "--model_dir", lm_dir])
    assert exit_info.value.code == 0
    out[name] = (hf, lm.load(lm_dir), lm_dir)
  return out


def _hf_logprobs(hf, ids) -> np.ndarray:
  with torch.no_grad():
    logits = hf(torch.tensor([ids])).logits[0]
  return torch.log_softmax(logits.double(), -1).numpy()


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_score_equals_hf_log_softmax(name, models):
  hf, model, _ = models[name]
  rng = np.random.default_rng(1)
  contexts = [rng.integers(0, VOCAB, n).tolist() for n in (1, 9, 30, 4)]
  continuations = [rng.integers(0, VOCAB, n).tolist() for n in (3, 1, 12, 20)]
  logprobs, is_greedy = model.score(contexts, continuations)
  for i, (context, continuation) in enumerate(zip(contexts, continuations)):
    logp_LV = _hf_logprobs(hf, context + continuation)
    n = len(context)
    expected = sum(logp_LV[n - 1 + j, t] for j, t in enumerate(continuation))
    assert abs(logprobs[i] - expected) <= TOL, (i, logprobs[i], expected)
    greedy = logp_LV[n - 1:-1].argmax(-1).tolist() == continuation
    assert is_greedy[i] == greedy
  # A continuation that is HF's own greedy choice is greedy for us too.
  context = contexts[1]
  best = int(_hf_logprobs(hf, context)[-1].argmax())
  assert model.score([context], [[best]])[1][0]


def test_score_rolling_covers_long_texts_once(models):
  """Longer than the context (64): the rolling total equals the sum of per-window scores
  computed by hand with HF logits, disjoint (context_len=1) and strided windows."""
  hf, model, _ = models["gpt2"]
  ids = np.random.default_rng(2).integers(0, VOCAB, 150).tolist()
  prefix = 7
  model.tokenizer = type("T", (), {"prefix_id": prefix})()
  try:
    disjoint, strided = (model.score_rolling([ids], context_len=c)[0] for c in (1, 33))
  finally:
    model.tokenizer = None
  # disjoint: [prefix] + ids[:63] predicts ids[:64]; ids[63:127] predicts ids[64:128]; ...
  full = [prefix] + ids
  expected = 0.0
  for start in (0, 64, 128):
    end = min(start + 64, len(ids))
    window = full[max(0, end - 64):end]  # inputs predicting ids[end - 64 .. end - 1]
    lp = _hf_logprobs(hf, window)
    targets = ids[max(0, end - 64):end]
    for j in range(len(targets)):
      if max(0, end - 64) + j >= start:
        expected += lp[j, targets[j]]
  assert abs(disjoint - expected) <= TOL
  # strided windows condition on more context, so the total differs but is finite
  assert np.isfinite(strided) and abs(strided - disjoint) > 1e-3


def _hf_greedy(hf, prompts, max_new_tokens, eos_ids) -> list[list[int]]:
  """HF generate(do_sample=False) on the left-padded batch: new tokens per prompt, up to and
  including the first EOS (HF pads the rest)."""
  width = max(map(len, prompts))
  ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
  mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
  with torch.no_grad():
    out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                      max_new_tokens=max_new_tokens, eos_token_id=list(eos_ids) or None,
                      pad_token_id=0)
  rows = out[:, width:].tolist()
  ends = [next((i + 1 for i, t in enumerate(r) if t in eos_ids), len(r)) for r in rows]
  return [r[:n] for r, n in zip(rows, ends)]


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_greedy_equals_hf_generate_on_a_ragged_batch(name, models):
  hf, model, _ = models[name]
  # EOS: the id the import kept from the HF config (Llama's 2), and a token greedy decoding
  # reaches in row 0, so that rows end at different steps.
  free = _hf_greedy(hf, RAGGED, 12, ())
  first_seen = {t: i for i, t in reversed(list(enumerate(free[0])))}
  eos = next(t for t, i in sorted(first_seen.items(), key=lambda x: x[1]) if i >= 2)
  model.eos_ids = tuple(sorted({*model.eos_ids, eos}))
  expected = _hf_greedy(hf, RAGGED, 12, model.eos_ids)
  assert 3 <= len(expected[0]) < 12 and len(set(map(len, expected))) > 1
  assert model.generate(RAGGED, max_new_tokens=12) == expected
  # Each row alone gives the same tokens; beam search with one beam is greedy.
  assert model.generate([RAGGED[1]], max_new_tokens=12) == [expected[1]]
  beams = model.beam_search(RAGGED, max_new_tokens=12, num_beams=1, length_penalty=0.0)
  assert [hyps[0][0] for hyps in beams] == expected


def test_lm_sample_chat_equals_transformers(models, capsys):
  """lm-sample --chat on the import: the HF tokenizer's chat template, greedy decoding and
  detokenization give exactly what transformers gives."""
  hf, _, model_dir = models["gpt2"]
  reference = transformers.AutoTokenizer.from_pretrained(os.path.join(model_dir, "tokenizer"))
  prompt = reference.apply_chat_template([{"role": "user", "content": "Hi 🙂"}], tokenize=False,
                                         add_generation_prompt=True)
  ids = reference.encode(prompt, add_special_tokens=False)
  with torch.no_grad():
    out = hf.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                      do_sample=False, max_new_tokens=10, eos_token_id=reference.eos_token_id,
                      pad_token_id=0)
  expected = reference.decode(out[0, len(ids):], skip_special_tokens=True)
  with pytest.raises(SystemExit) as exit_info:
    sample.main(["--model_dir", model_dir, "--chat", "--prompt", "Hi 🙂",
                 "--temperature", "0", "--max_new_tokens", "10"])
  assert exit_info.value.code == 0
  assert capsys.readouterr().out == expected + "\n"
