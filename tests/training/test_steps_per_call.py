"""Several optimizer steps per jitted call (train.steps_per_call): the same training as one step
per call, logged at the same steps, and a resume from a checkpoint is still bit-exact."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import NANO_RUN, REPO
from helpers import train_fails
from lm.cli import train
from lm.model_dir import read_params
from lm.training.loop import _call_steps


def test_calls_never_cross_a_step_with_host_work():
  # log every 10, eval every 20, checkpoint every 25, 40 steps, 4 per call.
  groups, step = [], 0
  while step < 40:
    n = _call_steps(step, 4, 40, (10, 20, 25))
    groups.append(n)
    step += n
  # Stops at 10, 20, 25, 30, 40: 4 + 4 + 1 + 1 | 4 + 4 + 1 + 1 | 4 + 1 | 4 + 1 | 4 + 4 + 1 + 1.
  assert groups == [4, 4, 1, 1] * 2 + [4, 1] * 2 + [4, 4, 1, 1]
  assert _call_steps(0, 1, 40, (10, 20, 25)) == 1
  assert _call_steps(0, 8, 40, (8, 0, 16)) == 8  # eval_every 0: only at the end


def _train(model_dir, *extra):
  with pytest.raises(SystemExit) as exit_info:
    train.main([f"--model_dir={model_dir}", "--gin.TRAIN_STEPS=40"] + NANO_RUN + list(extra))
  assert exit_info.value.code == 0


def _losses(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.mark.slow
def test_scanned_calls_train_as_single_steps_and_resume_bit_exactly(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  single, scanned = str(tmp_path / "single"), str(tmp_path / "scanned")
  _train(single)
  _train(scanned, "--gin.train.steps_per_call=4")
  a, b = _losses(single), _losses(scanned)
  assert sorted(a) == sorted(b) == [10, 20, 30, 40]
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-5)
  assert a[40] < a[10]

  # Resume from the step-20 checkpoint (as after a crash): the same step-40 params, bit for bit.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(scanned, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "40"))
  _train(resumed, "--gin.train.steps_per_call=4")
  expected = read_params(os.path.join(scanned, "checkpoints"), 40)
  got = read_params(os.path.join(resumed, "checkpoints"), 40)
  for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bad_steps_per_call_is_one_error_line(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  train_fails([f"--model_dir={tmp_path / 'run'}"] + NANO_RUN + ["--gin.train.steps_per_call=0"],
              capsys, "train.steps_per_call must be a positive integer")
  assert not os.path.exists(tmp_path / "run")
