"""lm.evaluation on a tiny in-memory model: log-likelihoods against a hand computation from
full-sequence logits, harness metric conventions, few-shot draws, perplexity, user errors."""
import json
import math
import os
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from lm.api import LoadedModel
from lm.errors import UserError
from lm.evaluation import fewshot, metrics, multiple_choice, perplexity, registry
from lm.evaluation.multiple_choice import Doc
from lm.models.config import ModelConfig
from lm.models.transformer import Transformer
from lm.tokenizers import CharTokenizer


@pytest.fixture(scope="module")
def model():
  tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz ?:.,\n")
  cfg = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, num_layers=2, num_heads=4,
                    mlp_dim=64, max_len=48)
  # Larger weights than the init: log-likelihoods differ by O(1) between choices.
  init = jax.jit(lambda key: jax.tree.map(lambda p: p * 4 if p.ndim > 1 else p, Transformer(
      cfg).init(key, np.zeros((1, 8), np.int32))["params"]))
  params = init(jax.random.PRNGKey(0))
  return LoadedModel(config=cfg, params=params, tokenizer=tokenizer)


def _hand_loglikelihood(model, context: str, continuation: str) -> float:
  """log p(continuation | context) from one full forward pass, by hand (char tokenizer:
  the joint encoding is the concatenation; an empty context becomes EOS)."""
  ctx = model.tokenizer.encode(context) or [model.tokenizer.eos_id]
  cont = model.tokenizer.encode(continuation)
  whole = (ctx + cont)[-(model.config.max_len + 1):]
  inputs = np.zeros((1, model.config.max_len), np.int32)  # right padding: causal, no effect
  inputs[0, :len(whole) - 1] = whole[:-1]
  logits = np.asarray(model.logits(inputs))[0].astype(np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  targets = whole[1:]
  return float(sum(logp[t, targets[t]] for t in range(len(targets) - len(cont), len(targets))))


ITEMS = [
    [("question: what is red?\nanswer:", " a rose"), ("question: what is red?\nanswer:", " sky"),
     ("question: what is red?\nanswer:", " the sun"),
     ("question: what is red?\nanswer:", "a")],  # one token: scored from the context alone
    [("he said the", " dog ran"), ("she said the", " dog ran")],  # partial scoring
    [("", " hello")],  # empty context: the EOS prefix
    [("x" * 45, " tail end")],  # longer than max_len: cut on the left, scored pair by pair
]
LONG = ("ab", " the continuation is longer than forty eight characters: two windows")


def test_choice_scores_equal_hand_computed_loglikelihoods(model):
  out = model.score_choices(ITEMS, batch_size=2)
  for item, (lls, greedy) in zip(ITEMS, out):
    hand = [_hand_loglikelihood(model, c, x) for c, x in item]
    np.testing.assert_allclose(lls, hand, atol=2e-4, rtol=1e-5)
    _, ref_greedy = model.score([c for c, _ in item], [x for _, x in item])
    np.testing.assert_array_equal(greedy, ref_greedy)
  # Packed differently (many groups over several rows, one row per call): the same scores.
  for (lls, greedy), (ref_lls, ref_greedy) in zip(
      model.score_choices(ITEMS * 6, batch_size=1), out * 6):
    np.testing.assert_allclose(lls, ref_lls, atol=2e-5)
    np.testing.assert_array_equal(greedy, ref_greedy)
  # A continuation longer than max_len: disjoint windows, each after all that precedes it.
  (lls, _), = model.score_choices([[LONG]])
  tail = LONG[1][48:]
  hand = _hand_loglikelihood(model, LONG[0], LONG[1][:48]) + _hand_loglikelihood(
      model, LONG[0] + LONG[1][:48], tail)
  assert lls[0] == pytest.approx(hand, abs=5e-4)


def test_multiple_choice_metrics_follow_the_scores(model):
  docs = [Doc("question: what is red?\nanswer:", ["a rose", "sky", "the sun"], 1),
          Doc("", ["x", "y"], 0, contexts=["he said the", "she said the"], continuation="dog")]
  result = multiple_choice.evaluate_docs(model, "t", docs, batch_size=2)
  hand_acc = []
  for doc in docs:
    lls = [_hand_loglikelihood(model, c, x) for c, x in doc.pairs()]
    hand_acc.append(float(np.argmax(lls) == doc.gold))
  assert result.metrics["acc"] == np.mean(hand_acc)
  assert result.num_examples == 2 and len(result.examples) == 2
  assert result.examples[0]["requests"][1] == ["question: what is red?\nanswer:", " sky"]


def test_acc_norm_divides_by_characters_and_can_flip_the_answer():
  # "no" is likelier in total, "absolutely" per character: acc picks 0, acc_norm picks 1.
  lls = np.array([-3.0, -5.0])
  assert metrics.choose(lls, ["no", "absolutely"]) == (0, 1)  # -1.5/char vs -0.5/char
  assert metrics.choose([-2.0, -2.0], ["ab", "cd"]) == (0, 0)  # ties: the first choice
  fake = SimpleNamespace(
      score_choices=lambda items, batch_size: [(lls, np.zeros(2, bool))] * len(items))
  docs = [Doc("q:", ["no", "absolutely"], 1)]
  result = multiple_choice.evaluate_docs(fake, "t", docs)
  assert result.metrics == {"acc": 0.0, "acc_norm": 1.0}


def test_mean_stderr_is_the_sample_standard_error():
  x = [1.0, 0.0, 1.0, 1.0]
  assert metrics.mean_stderr(x) == pytest.approx(np.std(x, ddof=1) / 2)
  assert metrics.mean_stderr([1.0]) is None


def test_fewshot_never_draws_the_scored_item_and_is_reproducible():
  for i in range(6):
    for seed in range(20):
      drawn = fewshot.sample_indices(6, 5, seed, "t", i)
      assert i not in drawn and len(set(drawn)) == 5
      assert drawn == fewshot.sample_indices(6, 5, seed, "t", i)
  assert {tuple(fewshot.sample_indices(50, 3, s, "t", 0)) for s in range(5)}.__len__() > 1
  with pytest.raises(UserError):
    fewshot.sample_indices(6, 6, 0, "t", 0)  # only 5 others
  pool = ["a", "b", "a", "c", "d", "e"]  # "a" twice: neither copy is drawn for document 0
  draws = fewshot.harness_draws(pool, pool, 3, seed=1234)
  for i, drawn in enumerate(draws):
    assert len(set(drawn)) == 3 and all(pool[j] != pool[i] for j in drawn)
  assert draws == fewshot.harness_draws(pool, pool, 3, seed=1234)
  assert fewshot.harness_draws(pool, pool[:2], 3, seed=1234) == draws[:2]  # --limit 2


def test_fewshot_prompts_exclude_the_document_and_do_not_depend_on_limit():
  captured = []
  fake = SimpleNamespace(score_choices=lambda items, batch_size: (
      captured.append(items) or [(np.zeros(2), np.zeros(2, bool))] * len(items)))
  docs = [Doc(f"q{i}:", [f"a{i}", f"b{i}"], 0) for i in range(8)]
  multiple_choice.evaluate_docs(fake, "t", docs, num_fewshot=3, seed=7)
  multiple_choice.evaluate_docs(fake, "t", docs, num_fewshot=3, seed=7, limit=3)
  full, limited = captured
  assert full[:3] == limited
  for i, item in enumerate(full):
    prefix = item[0][0][:-len(docs[i].query)]
    assert prefix.count("\n\n") == 3 and f"q{i}: a{i}" not in prefix


def test_file_perplexity_matches_the_rolling_loglikelihood(model, tmp_path):
  texts = ["the cat sat on the mat. " * 5, "a dog, a log\nand a frog"]
  path = tmp_path / "docs.jsonl"
  path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  result = registry.get_task(f"ppl:{path}")(model, data_dir=None, num_fewshot=0, limit=None,
                                             seed=0, batch_size=4)
  total = float(np.sum(model.score_rolling(texts)))  # disjoint windows of max_len
  nbytes, words = sum(len(t.encode()) for t in texts), 31 + 7  # re.split(r"\s+")
  assert result.metrics["bits_per_byte"] == pytest.approx(-total / nbytes / math.log(2), 1e-5)
  assert result.metrics["word_perplexity"] == pytest.approx(math.exp(-total / words), 1e-5)
  # A stride below seq_len gives every later window more context: a different total.
  strided = perplexity.window_logprobs(model, [model.tokenizer.encode(texts[0])], 32, 8)
  assert abs(strided[0] - model.score_rolling(texts[:1])[0]) > 1e-3
  with pytest.raises(UserError, match="learned position table"):
    perplexity.window_logprobs(model, [[5, 6]], seq_len=64)


def _token_loglikelihood(model, context, continuation) -> float:
  """log p(continuation | context) of token lists from one forward pass, by hand."""
  whole = list(context) + list(continuation)
  logits = np.asarray(model.logits([whole[:-1]]))[0].astype(np.float64)
  top = logits.max(-1, keepdims=True)
  logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  return float(sum(logp[t, whole[t + 1]] for t in range(len(context) - 1, len(whole) - 1)))


def test_score_rolling_takes_a_window_length(model):
  # 20 tokens in windows of 8 whose scored parts overlap by none (context_len 1) or see at
  # least 2 earlier tokens (context_len 3: stride 6), each window by hand.
  text = "the cat sat on a mat"
  ids, eos = model.encode(text), model.tokenizer.eos_id
  assert len(ids) == 20
  for context_len, windows in [
      (1, [([eos], ids[:8]), (ids[7:8], ids[8:16]), (ids[11:16], ids[16:])]),
      (3, [([eos], ids[:8]), (ids[5:8], ids[8:14]), (ids[11:14], ids[14:])])]:
    hand = sum(_token_loglikelihood(model, c, x) for c, x in windows)
    for texts in ([text], [ids]):
      (got,) = model.score_rolling(texts, context_len=context_len, window=8)
      assert got == pytest.approx(hand, abs=2e-4)
  with pytest.raises(UserError, match="exceeds the model's 48 learned positions"):
    model.score_rolling([text], window=64)


def test_no_module_reads_a_loaded_models_private_attributes():
  """Scoring, evaluation and compression go through LoadedModel's public methods."""
  import ast
  import lm
  root = os.path.dirname(lm.__file__)
  found = []
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      if not name.endswith(".py") or path == os.path.join(root, "api.py"):
        continue
      for node in ast.walk(ast.parse(open(path).read())):
        owner = node.value if isinstance(node, ast.Attribute) else None
        owner = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
        if owner == "model" and node.attr.startswith("_"):
          found.append(f"{os.path.relpath(path, root)}:{node.lineno} model.{node.attr}")
  assert not found, found


def test_unknown_task_and_missing_files_are_user_errors(model, tmp_path):
  with pytest.raises(UserError, match="unknown task"):
    registry.get_task("no_such_task")
  with pytest.raises(UserError, match="does not exist"):
    registry.get_task("arc_easy")(model, data_dir=str(tmp_path), num_fewshot=0, limit=1,
                                  seed=0, batch_size=1)
  with pytest.raises(UserError, match="no file matches"):
    registry.get_task(f"ppl:{tmp_path}/none*.txt")(model, data_dir=None)


def test_seqio_perplexity_equals_score_rolling_on_the_same_text(trained_run):
  import lm
  from lm.data import documents
  model = lm.load(trained_run)  # tiny_shakespeare_char, max_len 32
  (text,), (ids,) = documents.documents("tiny_shakespeare_char", "validation")
  assert ids == model.tokenizer.encode(text)  # the task's vocabulary is the model's
  result = registry.get_task("seqio:tiny_shakespeare_char:validation")(
      model, data_dir=None, batch_size=64, stride=24)
  total = float(model.score_rolling([text], context_len=32 - 24 + 1, batch_tokens=16384)[0])
  nbytes = len(text.encode("utf-8"))
  assert result.num_examples == 1 and nbytes > 100_000
  assert result.metrics["bits_per_byte"] == pytest.approx(-total / nbytes / math.log(2), 1e-5)
  assert result.metrics["token_perplexity"] == pytest.approx(math.exp(-total / len(ids)), 1e-5)


def _ppl_argv(model_dir, docs, *extra):
  return [f"--model_dir={model_dir}", f"--tasks=ppl:{docs}", "--no_compilation_cache",
          *extra]


def test_lm_eval_merges_each_run_into_the_step_report(trained_run, tmp_path, capsys):
  import shutil
  from lm.cli import eval as eval_cli
  model_dir = str(tmp_path / "run")
  shutil.copytree(trained_run, model_dir, ignore=shutil.ignore_patterns("eval"))
  a, b = tmp_path / "a.txt", tmp_path / "b.txt"
  a.write_text("first citizen: we are accounted poor citizens. " * 4)
  b.write_text("before we proceed any further, hear me speak. " * 4)
  path = os.path.join(model_dir, "eval", "step_40.json")

  def run(*argv):
    with pytest.raises(SystemExit) as exit_info:
      eval_cli.main(list(argv))
    assert exit_info.value.code == 0, capsys.readouterr().err
    with open(path) as f:
      return json.load(f)

  first = run(*_ppl_argv(model_dir, a))
  both = run(*_ppl_argv(model_dir, b))
  assert list(both["results"]) == [f"ppl:{a}", f"ppl:{b}"]  # the first run's task is kept
  for section in ("results", "stderr", "num_examples", "examples"):
    assert both[section][f"ppl:{a}"] == first[section][f"ppl:{a}"]
  assert both["config"]["tasks"] == [f"ppl:{b}"]
  again = run(*_ppl_argv(model_dir, a, "--seq_len=16"))  # a again: a replaced, b kept
  assert again["results"][f"ppl:{b}"] == both["results"][f"ppl:{b}"]
  assert again["results"][f"ppl:{a}"] != first["results"][f"ppl:{a}"]
  assert again["task_config"][f"ppl:{a}"]["seq_len"] == 16
  assert again["task_config"][f"ppl:{b}"]["seq_len"] is None
  assert os.listdir(os.path.dirname(path)) == ["step_40.json"]  # no temporary file left
  with open(path, "w") as f:
    f.write("{not json")  # a damaged report is refused before evaluating, and kept
  with pytest.raises(SystemExit) as exit_info:
    eval_cli.main(_ppl_argv(model_dir, a))
  assert exit_info.value.code == 2
  assert "error: " in capsys.readouterr().err and open(path).read() == "{not json"


def _copa_data_dir(tmp_path):
  """A data dir holding a 3-document copa.jsonl (every gold choice 0)."""
  data = tmp_path / "data"
  (data / "copa").mkdir(parents=True)
  (data / "copa" / "copa.jsonl").write_text("".join(json.dumps(
      {"query": f"the man fell {i}, because", "choices": ["he slipped", "he sang"], "gold": 0})
      + "\n" for i in range(3)))
  return data


def test_lm_eval_bad_options_and_files_are_one_error_line(trained_run, tmp_path, capsys):
  from lm.cli import eval as eval_cli
  data = _copa_data_dir(tmp_path)
  strings = tmp_path / "strings.jsonl"
  strings.write_text('{"text": "a document"}\n"a string, not an object"\n')
  docs = tmp_path / "docs.txt"
  docs.write_text("some text")
  cases = [
      (["--tasks=copa", f"--data_dir={data}", "--num_fewshot=2000", "--limit=2"],
       "copa: --num_fewshot 2000 asks for more examples than the 2 other documents"),
      ([f"--tasks=ppl:{strings}"], f'{strings}:2: expected an object with a string "text"'),
      ([f"--tasks=ppl:{docs}", "--stride=0"], "--stride must be >= 1, got 0"),
      ([f"--tasks=ppl:{docs}", "--seq_len=0"], "--seq_len must be >= 1, got 0"),
  ]
  for argv, message in cases:
    with pytest.raises(SystemExit) as exit_info:
      eval_cli.main([f"--model_dir={trained_run}", "--no_compilation_cache"] + argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: ") and message in err, err


def test_perplexity_window_options_are_checked_not_defaulted(model):
  ids = [model.tokenizer.encode("the cat sat on the mat")]
  for kwargs, message in [({"seq_len": 0}, "--seq_len must be >= 1"),
                          ({"stride": 0}, "--stride must be in"),
                          ({"seq_len": 8, "stride": 9}, "--stride must be in")]:
    with pytest.raises(UserError, match=message):
      perplexity.window_logprobs(model, ids, **kwargs)


def test_fewshot_pool_too_small_is_a_user_error():
  pool = [f"doc {i}" for i in range(5)]
  for sampler in fewshot.SAMPLERS:
    assert all(len(d) == 4 for d in fewshot.draws(sampler, pool, pool, 4, 0, "t"))
    with pytest.raises(UserError, match="t: --num_fewshot 5 asks for more examples than the 4"):
      fewshot.draws(sampler, pool, pool[:2], 5, 0, "t")
  pool = ["a", "a", "b", "c"]  # copies of document 0: only two others remain
  with pytest.raises(UserError, match="--num_fewshot"):
    fewshot.draws("harness", pool, pool[:1], 3, 0, "t")


def test_logits_reject_tokens_the_model_cannot_embed(model):
  cfg = model.config  # learned positions, max_len 48
  ok = np.asarray(model.logits(np.ones((2, cfg.max_len), np.int32)))
  assert ok.shape == (2, cfg.max_len, cfg.vocab_size) and np.isfinite(ok).all()
  for tokens, message in [(np.ones((1, cfg.max_len + 1), np.int32), "49 tokens exceed"),
                          ([[1, 2, cfg.vocab_size]], "outside"), ([[1, -1]], "outside")]:
    with pytest.raises(UserError, match=message):
      model.logits(tokens)
  with pytest.raises(UserError, match="request 1 has a token id outside"):
    model.score([[1, 2], [3]], [[4], [cfg.vocab_size]])
  with pytest.raises(UserError, match="text 0 has a token id outside"):
    model.score_rolling([[1, cfg.vocab_size + 5]])


def test_a_continuation_merged_into_the_context_scores_zero(model, monkeypatch):
  # A tokenizer whose joint encoding of "ab" is one token: "a" + "b" leaves the continuation
  # no token of its own (the harness's answer: log-likelihood 0.0, greedy).
  encode = model.encode

  def merging_encode(text, add_special_tokens=False):
    return encode(text[:-2]) + [7] if text.endswith("ab") else encode(text)

  monkeypatch.setattr(model, "encode", merging_encode)
  contexts, continuations = ["the a", "the a"], ["b", " sky"]
  lls, greedy = model.score(contexts, continuations)
  assert lls[0] == 0.0 and greedy[0]
  (item_lls, item_greedy), = model.score_choices([list(zip(contexts, continuations))])
  assert item_lls[0] == 0.0 and item_greedy[0]
  assert item_lls[1] == pytest.approx(lls[1], abs=2e-4) and lls[1] < 0


def test_training_eval_reuses_its_compiled_model(trained_run, tmp_path):
  import lm
  from jax._src import dispatch
  from lm.evaluation import training
  data = _copa_data_dir(tmp_path)
  docs = tmp_path / "docs.txt"
  docs.write_text("first citizen: before we proceed any further, hear me speak. " * 3)
  loaded = lm.load(trained_run)
  tasks = ["copa", f"ppl:{docs}"]

  def scalars(params):
    return training.task_scalars(trained_run, loaded.config, params, loaded.mesh, tasks,
                                 data_dir=str(data))

  first = scalars(loaded.params)
  params = jax.tree.map(lambda p: p * 1.0, loaded.params)  # new arrays, same shapes
  traces = []
  listener = lambda event, duration, **_: traces.append(event)  # noqa: E731
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    second = scalars(params)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert second == first
  assert dispatch.JAXPR_TRACE_EVENT not in traces  # nothing traced (or compiled) again
  assert training._cached[1].params is None  # no training params kept alive between evals


def test_seqio_perplexity_of_an_instruction_task_scores_its_trained_tokens(model, tmp_path):
  from lm.data import vocabularies
  from lm.data.chat_templates import record_messages
  from lm.data.instruct import register_instruct_task, tokenize_conversation
  records = [{"prompt": "what is red?", "response": "a rose."},
             {"prompt": "and blue?", "response": "the sky, mostly."}]
  path = tmp_path / "chats.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  vocab = vocabularies.CharVocabulary(model.tokenizer.chars)  # the model's ids
  name = register_instruct_task("instruct_ppl_eval", {"validation": str(path)}, vocab)
  ids = [tokenize_conversation(record_messages(r), vocab)[0] for r in records]
  result = registry.get_task(f"seqio:{name}")(model, data_dir=None, batch_size=4)
  total = float(np.sum(model.score_rolling(ids)))
  assert result.num_examples == 2
  assert result.metrics["token_perplexity"] == pytest.approx(
      math.exp(-total / sum(map(len, ids))), 1e-5)
  assert [e["tokens"] for e in result.examples] == [len(i) for i in ids]
