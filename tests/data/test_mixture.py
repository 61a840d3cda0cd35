"""Mixtures (lm/data/mixtures.py, gin_configs/runs/mixture.gin): members read at their rates,
and a continued pre-training run reports validation loss on every member task."""
import json
import os

import numpy as np
import pytest

import lm
from conftest import REPO
from lm.cli import train
from lm.data.inputs import InputConfig, make_batches
from lm.data.mixtures import member_eval_batches, member_tasks, register_mixture
from lm.data.pipeline import SeqioBatches
from lm.data.tasks import register_files_task, shakespeare_char_vocabulary
from lm.errors import UserError

DOMAIN = ["zz z zzz zz z", "z zzz zz zzzz", "zzzz z zz z z", "zz zz zz zzz"]


def domain_task(tmp_path, name="domain_test"):
  (tmp_path / "train.txt").write_text("\n".join(DOMAIN * 20) + "\n")
  (tmp_path / "val.txt").write_text("\n".join(DOMAIN) + "\n")
  return register_files_task(name, {"train": str(tmp_path / "train.txt"),
                                    "validation": str(tmp_path / "val.txt")},
                             shakespeare_char_vocabulary())


def test_members_are_read_at_their_rates(tmp_path):
  name = register_mixture("mix_rates", [(domain_task(tmp_path), 3.0),
                                        ("tiny_shakespeare_char", 1.0)])
  assert member_tasks(name) == ["domain_test", "tiny_shakespeare_char"]
  assert member_tasks("tiny_shakespeare_char") == []
  cfg = InputConfig(task=name, batch_size=8, seq_len=16, pack=False)
  rows = np.concatenate([b["targets"] for _, b in zip(range(25), SeqioBatches(
      cfg, "train", shuffle=True, seed=0))])
  vocab = shakespeare_char_vocabulary()
  domain_ids = set(vocab.encode("z ")) | {0, vocab.eos_id}
  domain = sum(set(r.tolist()) <= domain_ids for r in rows)
  # 200 rows, p = 3/4: 150 expected, sd 6.1; a Shakespeare window is never only "z" and " ".
  assert 125 <= domain <= 175, domain
  sets = SeqioBatches(cfg, "train", shuffle=True, seed=0).eval_sets(2, make_batches)
  # Up to 2 batches each: the 4 validation documents fill one (padded) batch.
  assert {k: len(v) for k, v in sets.items()} == {"domain_test": 1, "tiny_shakespeare_char": 2}


def test_members_are_read_by_the_reader_passed_in(tmp_path):
  """Member evals come from the caller's batches_fn (the one that reads the mixture's own), with
  the member's task in an otherwise unchanged config; nothing else reads them."""
  name = register_mixture("mix_reader", {domain_task(tmp_path): 1.0, "tiny_shakespeare_char": 1.0})
  cfg = InputConfig(task=name, batch_size=4, seq_len=16, seed=7)
  calls = []

  def reader(member_cfg, split):
    calls.append((member_cfg, split))
    return iter([{"task": member_cfg.task, "i": i} for i in range(3)])

  sets = member_eval_batches(cfg, 2, reader)
  assert calls == [(InputConfig(task=t, batch_size=4, seq_len=16, seed=7), "validation")
                   for t in ("domain_test", "tiny_shakespeare_char")]
  assert sets == {t: [{"task": t, "i": 0}, {"task": t, "i": 1}]
                  for t in ("domain_test", "tiny_shakespeare_char")}
  assert member_eval_batches(InputConfig(), 2, reader) == {}  # not a mixture


def test_mixture_errors_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="unknown task 'nope'"):
    register_mixture("mix_bad", {"nope": 1.0})
  with pytest.raises(UserError, match="positive number"):
    register_mixture("mix_bad", {"tiny_shakespeare_char": 0})
  with pytest.raises(UserError, match="vocabularies\\) differ"):
    register_mixture("mix_bad", {"tiny_shakespeare_char": 1, "tiny_shakespeare_spm": 1})
  assert register_mixture("mix_bad", [(None, 1.0)]) is None  # an unset INIT_FROM's member


def test_mixture_run_reports_loss_on_every_member(trained_run, tmp_path):
  """mixture.gin from a trained run: eval/<task>/loss for both members at every eval, equal to
  the loss of the final weights on that member's validation batches computed here."""
  domain_task(tmp_path)  # writes the files
  out = str(tmp_path / "cpt")
  with pytest.raises(SystemExit) as exit_info:
    train.main([f"--model_dir={out}", f"--gin_file={REPO}/gin_configs/runs/mixture.gin",
                f"--gin.INIT_FROM='{trained_run}'", f"--gin.DOMAIN_TRAIN='{tmp_path}/train.txt'",
                f"--gin.DOMAIN_VALIDATION='{tmp_path}/val.txt'", "--gin.DOMAIN_RATE=0.9",
                "--gin.REPLAY_RATE=0.1", "--gin.TRAIN_STEPS=10", "--gin.EVAL_EVERY=5",
                "--gin.EVAL_STEPS=2", "--gin.SEQ_LEN=32", "--gin.BATCH_SIZE=8",
                "--gin.PACK=False", "--gin.LEARNING_RATE=3e-3", "--gin.LOG_EVERY=5",
                "--gin.sample_after_training.num_tokens=0", "--gin.train.progress=False"])
  assert exit_info.value.code == 0
  rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
  evals = {}
  for row in rows:
    for key, value in row.items():
      if key.startswith("eval/") and key.endswith("/loss"):
        evals.setdefault(key, {})[row["step"]] = value
  members = ["eval/domain/loss", "eval/tiny_shakespeare_char/loss"]
  assert sorted(evals) == sorted(["eval/loss"] + members)
  assert all(sorted(evals[k]) == [5, 10] for k in evals)
  # Mostly domain text: its loss falls while the replayed text's rises (forgetting shows).
  assert evals["eval/domain/loss"][10] < evals["eval/domain/loss"][5]
  assert evals["eval/tiny_shakespeare_char/loss"][10] > evals["eval/tiny_shakespeare_char/loss"][5]

  model = lm.load(out)
  for task in ("domain", "tiny_shakespeare_char"):
    cfg = InputConfig(task=task, batch_size=8, seq_len=32, pack=False)
    nll, count = 0.0, 0
    for _, batch in zip(range(2), make_batches(cfg, "validation")):
      logits = np.asarray(model.logits(batch["inputs"]), np.float64)
      top = logits.max(-1, keepdims=True)
      logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
      picked = np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
      nll -= (picked * batch["weights"]).sum()
      count += batch["weights"].sum()
    np.testing.assert_allclose(evals[f"eval/{task}/loss"][10], nll / count, rtol=2e-4)
