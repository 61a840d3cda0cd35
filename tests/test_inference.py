"""lm.load(...).generate / beam_search / score on a tiny random model: sharded = one device,
beam search = exhaustive enumeration, streaming = one-shot decoding, stop strings."""
import itertools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lm
from lm.model_dir import write_model_dir
from lm.decoding import beam, generate_ids
from lm.models.config import ModelConfig
from lm.models.transformer import Transformer

CHARS = "abcdefghij .!"  # a CharTokenizer: ids 3..15; 1 is EOS
CFG = ModelConfig(vocab_size=16, d_model=32, num_layers=2, num_heads=16, num_kv_heads=8,
                  head_dim=4, mlp_dim=64, positions="rope", norm="rmsnorm",
                  activation="swiglu", max_len=64, tie_embeddings=False, init_std=0.3)
PROMPTS = [[3, 9, 4, 12, 5], [7], [10, 10, 4]]
SAMPLING = dict(max_new_tokens=20, temperature=1.0, min_p=0.05, num_samples=3, seed=7)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A random GQA model (16 query / 8 key-value heads) with a character tokenizer."""
  path = str(tmp_path_factory.mktemp("tiny") / "model")
  params = nn.meta.unbox(Transformer(CFG).init(jax.random.PRNGKey(1),
                                               jnp.zeros((1, 8), jnp.int32))["params"])
  write_model_dir(path, CFG, params)
  os.makedirs(os.path.join(path, "tokenizer"))
  with open(os.path.join(path, "tokenizer", "chars.json"), "w") as f:
    json.dump({"chars": CHARS}, f)
  return path


@pytest.fixture(scope="module")
def model(model_dir):
  return lm.load(model_dir)


def _outputs(m):
  """What the API computes, for comparing meshes (shapes shared with the other tests so
  that compilations are reused)."""
  return dict(
      greedy=m.generate(PROMPTS, max_new_tokens=20),
      sampled=m.generate(PROMPTS, **SAMPLING),
      beams=[[t for t, _ in hyps] for hyps in m.beam_search(PROMPTS, 3, num_beams=4)],
      scores=m.score(["abc", "", "hello"], ["de", "f g", "!"]))


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", [(1, 1, 8), (2, 2, 2)])
def test_sharded_model_gives_the_same_tokens_and_scores(model, model_dir, mesh_shape):
  sharded = lm.load(model_dir, mesh_shape=mesh_shape)
  assert len(sharded.params["embed"]["embedding"].sharding.device_set) == 8
  expected, got = _outputs(model), _outputs(sharded)
  for key in ("greedy", "sampled", "beams"):
    assert got[key] == expected[key], key
  np.testing.assert_allclose(got["scores"][0], expected["scores"][0], atol=1e-4)
  np.testing.assert_array_equal(got["scores"][1], expected["scores"][1])


def test_outputs_follow_the_interface(model):
  out = _outputs(model)
  assert all(isinstance(r, list) and all(isinstance(t, int) for t in r) for r in out["greedy"])
  assert [len(s) for s in out["sampled"]] == [3, 3, 3]
  logprobs, is_greedy = out["scores"]
  assert logprobs.shape == is_greedy.shape == (3,) and (logprobs < 0).all()
  text = model.generate(["abc", "j"], max_new_tokens=5)
  ids = model.generate([model.tokenizer.encode(p) for p in ("abc", "j")], max_new_tokens=5)
  assert text == [model.tokenizer.decode(r) for r in ids]
  with pytest.raises(ValueError, match="does not fit"):
    model.score([[4]], [[5] * 65])
  rolling = model.score_rolling(["abcdefghij" * 9, [4, 5, 6]])
  assert rolling.shape == (2,) and rolling[1] == pytest.approx(
      model.score([[1]], [[4, 5, 6]])[0][0], abs=1e-5)


def test_streaming_in_chunks_gives_the_one_shot_tokens(model):
  with model._context():
    one_shot = generate_ids(model.module, model.params, PROMPTS, eos_ids=(1,), **SAMPLING)
  chunks = list(model.stream(PROMPTS, chunk_steps=8, **SAMPLING))
  assert len(chunks) >= 3 and chunks[-1] == one_shot
  assert model.generate(PROMPTS, **SAMPLING) == one_shot


def test_repeated_prompts_sample_differently_in_generate_and_stream(model):
  """Issue 19 item 7 through lm.load: generate(["x"] * 3) gives 3 different samples, streamed
  or not, and a prompt's samples at position 0 are those it gets alone."""
  texts = ["abc"] * 3
  out = model.generate(texts, **SAMPLING)
  assert len({t for samples in out for t in samples}) == 9
  assert list(model.stream(texts, chunk_steps=8, **SAMPLING))[-1] == out
  assert model.generate(texts[:1], **SAMPLING)[0] == out[0]


def test_stop_strings_cut_text_and_end_rows(model):
  texts = ["abc", "ghi", "j"]
  free = model.generate(texts, **SAMPLING)
  first = free[0][0]
  # A two-character string the first sample of row 0 produces first at character i >= 2.
  i = next(i for i in range(2, len(first) - 1) if first[i:i + 2] not in first[:i + 1])
  stop = first[i:i + 2]
  out = model.generate(texts, stop=[stop], **SAMPLING)
  cut = lambda t: t[:t.index(stop)] if stop in t else t
  assert out == [[cut(t) for t in samples] for samples in free]
  assert out[0][0] == first[:i]
  # Token outputs end with the token that completed the stop string.
  toks = model.generate([model.tokenizer.encode(p) for p in texts], stop=[stop], **SAMPLING)
  assert model.tokenizer.decode(toks[0][0]).endswith(stop)
  assert stop not in model.tokenizer.decode(toks[0][0][:-1])


def _exhaustive(model, prompt, max_new, eos, alpha):
  """Every sequence beam search can return, scored by full forward passes (model.score)."""
  others = [t for t in range(CFG.vocab_size) if t != eos]
  seqs = [list(p) + [eos] for n in range(max_new) for p in itertools.product(others, repeat=n)]
  seqs += [list(p) for p in itertools.product(others, repeat=max_new)]
  logprobs, _ = model.score([prompt] * len(seqs), seqs)
  scores = logprobs / np.array([beam.brevity_penalty(len(s), alpha) for s in seqs])
  order = np.argsort(-scores)
  return [seqs[i] for i in order], scores[order]


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_search_finds_the_exhaustive_best(model, alpha):
  """With 256 >= 15 ** 2 beams, no prefix is ever pruned: the n-best list must be exactly the
  enumeration's best 256 (EOS-ended and full-length sequences, length-penalised)."""
  prompt, max_new, eos = PROMPTS[0], 3, 1
  seqs, scores = _exhaustive(model, prompt, max_new, eos, alpha)
  with model._context():
    (hyps,) = beam.beam_search_ids(model.module, model.params, [prompt],
                                   max_new_tokens=max_new, num_beams=256,
                                   length_penalty=alpha, eos_ids=(eos,))
  assert hyps[0][0] == seqs[0]
  np.testing.assert_allclose([s for _, s in hyps], scores[:256], atol=1e-4)
  # A narrower search returns its hypotheses best first, each scored correctly.
  with model._context():
    (narrow,) = beam.beam_search_ids(model.module, model.params, [prompt],
                                     max_new_tokens=max_new, num_beams=4,
                                     length_penalty=alpha, eos_ids=(eos,))
  by_seq = {tuple(s): sc for s, sc in zip(seqs, scores)}
  assert [s for _, s in narrow] == sorted([s for _, s in narrow], reverse=True)
  for tokens, score in narrow:
    assert abs(by_seq[tuple(tokens)] - score) <= 1e-4
