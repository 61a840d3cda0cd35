"""Preference tuning: DPO / cDPO / IPO / SimPO losses, preference batches, cached reference
log-probabilities and an lm-train DPO run (lm/finetuning/preference*.py)."""
import dataclasses
import json
import math
import os
import random

import numpy as np
import pytest

import lm
from conftest import REPO
from lm.errors import UserError
from lm.finetuning import preference_data as pdata
from lm.finetuning.preference import PreferenceLoss, pair_metrics
from lm.tokenizers import CharTokenizer, load_tokenizer


def _pairs_file(path, n, seed):
  """Pairs whose chosen response is upper-case letters and rejected lower-case (the nano
  Shakespeare model prefers lower-case: the preference must be learned)."""
  rng = random.Random(seed)
  letters = "abcdefghijklmnopqrstuvwxyz"
  with open(path, "w") as f:
    for _ in range(n):
      word = "".join(rng.choice(letters) for _ in range(rng.randint(3, 6)))
      k = rng.randint(3, 6)
      f.write(json.dumps({"prompt": word + ":",
                          "chosen": "".join(rng.choice(letters.upper()) for _ in range(k)),
                          "rejected": "".join(rng.choice(letters) for _ in range(k))}) + "\n")
  return str(path)


def _log_sigmoid(x):
  return -math.log1p(math.exp(-x))


# pi_c, pi_r (policy), ref_c, ref_r (reference), |c|, |r| of one pair, and each loss by hand:
# h = (-5 + 6) - (-7 + 6.5) = 1.5.
LOGPS = (-5.0, -7.0, -6.0, -6.5, 4, 2)
HAND = {
    ("dpo", 0.1, 0.0): -_log_sigmoid(0.15),
    ("cdpo", 0.1, 0.2): -0.8 * _log_sigmoid(0.15) - 0.2 * _log_sigmoid(-0.15),
    ("ipo", 0.1, 0.0): (1.5 - 5.0) ** 2,
    ("simpo", 2.0, 0.0): -_log_sigmoid(2 * -5 / 4 - 2 * -7 / 2 - 0.5),  # gamma 0.5
    ("sft", 0.1, 0.0): 5.0,
}


@pytest.mark.parametrize("loss_type,beta,smoothing", list(HAND))
def test_each_loss_equals_its_hand_computed_value(loss_type, beta, smoothing):
  loss = PreferenceLoss(loss_type, beta=beta, label_smoothing=smoothing, gamma=0.5)
  value, chosen, rejected = loss.pair_losses(*(np.float32(x) for x in LOGPS))
  assert float(value) == pytest.approx(HAND[(loss_type, beta, smoothing)], rel=1e-5)
  expected_margin = 2 * (-5 / 4 + 7 / 2) if loss_type == "simpo" else beta * 1.5
  assert float(chosen - rejected) == pytest.approx(expected_margin, rel=1e-5)


def test_bad_loss_settings_are_user_errors():
  for kwargs in ({"loss_type": "kto"}, {"beta": 0.0}, {"loss_type": "cdpo"},
                 {"loss_type": "dpo", "label_smoothing": 0.1}):
    with pytest.raises(UserError):
      PreferenceLoss(**kwargs)


@pytest.fixture(scope="session")
def pair_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("pairs")
  return _pairs_file(d / "train.jsonl", 48, seed=0), _pairs_file(d / "val.jsonl", 16, seed=1)


def test_objective_on_a_tiny_model_equals_numpy_from_score(trained_run, pair_files):
  """The jitted objective (one forward over chosen + rejected rows, prompt masked) against the
  losses written out in numpy from `score` of the policy (step 40) and reference (step 20)."""
  import jax
  policy, reference = lm.load(trained_run), lm.load(trained_run, step=20)
  pairs, _ = pdata.encode_pairs(load_tokenizer(trained_run), pdata.read_pairs(pair_files[1]),
                                seq_len=32)
  pc, pr = pdata.score_pairs(policy, pairs)
  rc, rr = pdata.score_pairs(reference, pairs)
  assert not np.allclose(pc - rc, pr - rr)  # the two checkpoints differ
  nc = np.array([len(p.chosen) for p in pairs])
  nr = np.array([len(p.rejected) for p in pairs])
  h = (pc - rc) - (pr - rr)
  logsig = lambda x: -np.logaddexp(0, -x)
  expected = {"dpo": -logsig(0.1 * h),
              "cdpo": -0.9 * logsig(0.1 * h) - 0.1 * logsig(-0.1 * h),
              "ipo": (h - 1 / (2 * 0.1)) ** 2,
              "simpo": -logsig(2.0 * pc / nc - 2.0 * pr / nr - 0.5)}
  batch = pdata.pair_rows(pairs + [None] * 3, seq_len=32)  # 3 padding pairs must not count
  batch["reference_chosen"] = np.concatenate([rc, np.zeros(3)]).astype(np.float32)
  batch["reference_rejected"] = np.concatenate([rr, np.zeros(3)]).astype(np.float32)
  forward = jax.jit(lambda b: policy.module.apply({"params": policy.params}, b["inputs"]))
  for loss_type, values in expected.items():
    beta = 2.0 if loss_type == "simpo" else 0.1
    objective = PreferenceLoss(loss_type, beta=beta, gamma=0.5,
                               label_smoothing=0.1 if loss_type == "cdpo" else 0.0)
    loss_sum, (weight, sums) = objective(forward, batch)
    assert float(weight) == len(pairs)
    assert float(loss_sum) / len(pairs) == pytest.approx(values.mean(), rel=1e-4, abs=1e-5)
    assert float(sums["chosen_logps"]) == pytest.approx(pc.sum(), rel=1e-5)
    assert float(sums["rejected_logps"]) == pytest.approx(pr.sum(), rel=1e-5)
    # pair_metrics (what the experiment reports) agrees with the in-graph metrics
    metrics = pair_metrics(objective, (pc, pr), (rc, rr), (nc, nr))
    assert metrics["loss"] == pytest.approx(values.mean(), rel=1e-4, abs=1e-5)
    assert metrics["reward_margin"] == pytest.approx(float(sums["reward_margin"]) / len(pairs),
                                                     rel=1e-4, abs=1e-5)


def test_batches_mask_the_prompt_and_resume(trained_run, pair_files):
  cfg = pdata.PreferenceInputConfig(train_path=pair_files[0], reference_dir=trained_run,
                                    reference_logps="none", batch_size=8, seq_len=32, seed=3)
  batches = pdata.preference_batches(cfg, "train")
  first = [next(batches) for _ in range(8)]  # 48 pairs: 6 batches an epoch, then a new order
  resumed = pdata.preference_batches(cfg, "train")
  resumed.restore(5)
  for expected in first[5:]:
    got = next(resumed)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)
  tok = load_tokenizer(trained_run)
  records = {f"User: {r['prompt']}\nAssistant: ": r for _, r in pdata.read_pairs(pair_files[0])}
  b = first[0]
  for r in range(8):
    for side in ("chosen", "rejected"):
      w = b[f"{side}_weights"][r].astype(bool)
      start = int(np.argmax(w))  # the first weighted target follows the prompt's last token
      prompt = tok.decode(b[f"{side}_inputs"][r][:start + 1])
      assert tok.decode(b[f"{side}_targets"][r][w]) == records[prompt][side]
      assert b[f"{side}_targets"][r][w][-1] == tok.eos_id  # EOS ends every response
      assert w.sum() == len(records[prompt][side]) + 1


def test_cached_reference_logps_equal_online_ones_and_go_stale(trained_run, pair_files,
                                                              tmp_path, monkeypatch):
  cfg = pdata.PreferenceInputConfig(train_path=pair_files[0], reference_dir=trained_run,
                                    reference_logps="online", batch_size=8, seq_len=32)
  online = pdata.preference_batches(cfg, "train")
  cached = pdata.preference_batches(
      dataclasses.replace(cfg, reference_logps="cached"), "train")
  cached.start_run(str(tmp_path))
  firsts = []
  for _ in range(2):
    a, b = next(online), next(cached)
    for k in ("reference_chosen", "reference_rejected"):
      np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-5)
    firsts.append(b)
  assert (tmp_path / pdata.CACHE_FILE).exists()
  assert os.listdir(tmp_path / "tokenizer")  # the run gets the reference's tokenizer

  calls = []
  real_score = pdata.score_pairs
  monkeypatch.setattr(pdata, "score_pairs", lambda *a: calls.append(1) or real_score(*a))
  again = pdata.preference_batches(cached.cfg, "train")
  again.start_run(str(tmp_path))
  np.testing.assert_array_equal(next(again)["reference_chosen"], firsts[0]["reference_chosen"])
  assert not calls  # read from the cache, not scored again
  other = _pairs_file(tmp_path / "other.jsonl", 16, seed=7)  # different pairs: stale cache
  stale = pdata.preference_batches(
      dataclasses.replace(cfg, reference_logps="cached", train_path=other), "train")
  stale.start_run(str(tmp_path))
  next(stale)
  assert calls


def test_a_dpo_run_stops_where_its_responses_end(tmp_path):
  """The run gets the reference's generation_config.json, with the id that closes the pairs'
  responses (here the llama3 template's <|eot_id|>, not the tokenizer's EOS)."""
  from helpers import llama3_tokenizer_dir
  reference = llama3_tokenizer_dir(tmp_path / "reference", eos="<|end_of_text|>")
  (tmp_path / "reference" / "generation_config.json").write_text(
      json.dumps({"eos_token_id": 1, "top_p": 0.9}))
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text(json.dumps({"prompt": "Hello", "chosen": "Bob", "rejected": "Name"}) + "\n")
  cfg = pdata.PreferenceInputConfig(train_path=str(pairs), reference_dir=reference,
                                    reference_logps="none", batch_size=1, seq_len=32,
                                    template="llama3")
  run = tmp_path / "run"
  run.mkdir()
  pdata.preference_batches(cfg, "train").start_run(str(run))
  with open(run / "generation_config.json") as f:
    assert json.load(f) == {"eos_token_id": [1, 2], "top_p": 0.9}


def test_pairs_use_the_instruction_chat_templates(trained_run):
  tok = load_tokenizer(trained_run)
  enc = lambda text: tok.encode(text, add_special_tokens=False)
  chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
          {"role": "user", "content": "and?"}]
  assert pdata.render_pair(tok, chat, "OK", "plain") == (
      enc("User: hi\nAssistant: yo") + [tok.eos_id] + enc("\nUser: and?\nAssistant: "),
      enc("OK") + [tok.eos_id])
  assert pdata.render_pair(tok, "hi", "OK", "completion") == (enc("hi"), enc("OK") + [tok.eos_id])


def test_bad_pair_files_are_user_errors(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a"}\n')
  with pytest.raises(UserError, match=r"bad.jsonl:2"):
    pdata.read_pairs(str(bad))
  with pytest.raises(UserError, match="not found"):
    pdata.read_pairs(str(tmp_path / "missing.jsonl"))
  # A chat prompt whose message has no role (was KeyError: 'role' when rendered).
  bad.write_text('\n{"prompt": [{"content": "hi"}], "chosen": "b", "rejected": "c"}\n')
  with pytest.raises(UserError, match=r"bad.jsonl:2: 'prompt' must be a string or a list"):
    pdata.read_pairs(str(bad))


def test_pairs_the_template_cannot_render_name_file_and_line(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                 '{"prompt": [{"role": "bot", "content": "hi"}], "chosen": "b", "rejected": "c"}\n')
  tok = CharTokenizer("abchi")
  with pytest.raises(UserError, match=r"bad.jsonl:2: chat template 'plain' knows roles"):
    pdata.encode_pairs(tok, pdata.read_pairs(str(bad)), seq_len=32)


def _lm_train(args):
  from lm.cli import train
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    with pytest.raises(SystemExit) as exit_info:
      train.main(args)
  finally:
    os.chdir(cwd)
  return exit_info.value.code


def test_dpo_run_raises_held_out_reward_accuracy(trained_run, pair_files, tmp_path):
  """lm-train with dpo.gin from the nano run: held-out reward margin and accuracy rise, and
  the last eval metrics equal those computed with `score` from the saved checkpoint."""
  model_dir = str(tmp_path / "dpo")
  reference = lm.load(trained_run)
  pairs, _ = pdata.encode_pairs(reference.tokenizer, pdata.read_pairs(pair_files[1]), 32)
  rc, rr = pdata.score_pairs(reference, pairs)
  before = np.mean(rc > rr)  # the reference itself ranks few chosen responses first
  args = [f"--model_dir={model_dir}", "--gin_file=gin_configs/runs/dpo.gin",
          f"--gin.INIT_FROM='{trained_run}'", f"--gin.PAIRS_TRAIN='{pair_files[0]}'",
          f"--gin.PAIRS_VALIDATION='{pair_files[1]}'", "--gin.SEQ_LEN=32",
          "--gin.TRAIN_STEPS=20", "--gin.LOG_EVERY=10", "--gin.EVAL_EVERY=10",
          "--gin.EVAL_STEPS=2", "--gin.LEARNING_RATE=1e-3", "--gin.CHECKPOINT_EVERY=20",
          "--gin.MESH_SHAPE=(-1,1,1)"]
  assert _lm_train(args) == 0
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    records = list(map(json.loads, f))
  evals = [r for r in records if "eval/reward_accuracy" in r]
  for r in records:  # tokens/s counts both rows of every pair: 8 pairs x 2 x SEQ_LEN per step
    if "train/tokens_per_sec" in r:
      assert r["train/tokens_per_sec"] * r["train/step_time_ms"] / 1000 == pytest.approx(512)
  assert [r["step"] for r in evals] == [10, 20]
  assert 0 < evals[0]["eval/reward_margin"] < evals[1]["eval/reward_margin"]
  assert evals[1]["eval/reward_accuracy"] >= 0.9
  assert evals[1]["eval/loss"] < math.log(2)  # DPO's loss at the reference
  policy = lm.load(model_dir)
  pc, pr = pdata.score_pairs(policy, pairs)
  assert np.mean(pc > pr) > before
  metrics = pair_metrics(PreferenceLoss(), (pc, pr), (rc, rr))
  for k, v in metrics.items():
    assert evals[1][f"eval/{k}"] == pytest.approx(v, rel=1e-3, abs=1e-4), k


@pytest.mark.slow
def test_dpo_run_without_reference_dir_fails_cleanly(tmp_path, capsys):
  args = [f"--model_dir={tmp_path / 'run'}", "--gin_file=gin_configs/runs/dpo.gin",
          "--gin_file=gin_configs/models/nano.gin", "--gin.train.model_cfg=@ModelConfig()",
          "--gin.SEQ_LEN=32"]
  assert _lm_train(args) == 2
  assert "error: PreferenceInputConfig.reference_dir is not set" in capsys.readouterr().err
  assert not (tmp_path / "run").exists()
