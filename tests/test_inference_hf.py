"""Decoding and scoring against transformers: random-weight HF GPT-2 and Llama (GQA, llama3
rope scaling) imported with lm-convert; greedy tokens equal HF generate's, scores equal the
summed log-softmax of HF's logits (float32, <= 1e-4)."""
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import lm  # noqa: E402
from lm.cli import convert  # noqa: E402

VOCAB, TOL = 96, 1e-4
HF_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB,
                                            n_positions=64),
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
  """{name: (HF model, lm model loaded from the lm-convert import)}.

  Weights are scaled up from HF's 0.02-std init so logits differ by O(1) between tokens and
  greedy choices are far from ties."""
  torch.manual_seed(0)
  out = {}
  for name, make_config in HF_CONFIGS.items():
    hf = transformers.AutoModelForCausalLM.from_config(make_config()).eval()
    for pname, p in hf.named_parameters():
      is_scale = p.ndim == 1 and "bias" not in pname
      p.data.normal_(1.0 if is_scale else 0.0, 0.1 if is_scale else 0.15)
    hf_dir, lm_dir = (str(tmp_path_factory.mktemp(name + s)) for s in ("_hf", "_lm"))
    hf.save_pretrained(hf_dir)
    with pytest.raises(SystemExit) as exit_info:
      convert.main(["import-hf", "--hf_dir", hf_dir, "--model_dir", lm_dir])
    assert exit_info.value.code == 0
    out[name] = (hf, lm.load(lm_dir))
  return out


def _hf_logprobs(hf, ids) -> np.ndarray:
  with torch.no_grad():
    logits = hf(torch.tensor([ids])).logits[0]
  return torch.log_softmax(logits.double(), -1).numpy()


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_score_equals_hf_log_softmax(name, models):
  hf, model = models[name]
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
  hf, model = models["gpt2"]
  ids = np.random.default_rng(2).integers(0, VOCAB, 150).tolist()
  prefix = 7
  model.tokenizer = type("T", (), {"bos_id": prefix, "eos_id": None})()
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
