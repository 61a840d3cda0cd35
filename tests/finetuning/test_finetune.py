"""gin_configs/runs/finetune.gin: a new run from another run directory, which is never written."""
import json
import os

import jax
import numpy as np
import pytest

from conftest import REPO
from lm.cli import train
from lm.model_dir import read_params
from helpers import snapshot, train_fails

FINETUNE = [f"--gin_file={REPO}/gin_configs/runs/finetune.gin", "--gin.SEQ_LEN=32",
            "--gin.BATCH_SIZE=8", "--gin.EVAL_STEPS=1", "--gin.LOG_EVERY=1",
            "--gin.sample_after_training.num_tokens=0", "--gin.train.progress=False"]


def test_finetune_starts_from_the_source_at_step_0_and_never_writes_it(trained_run, tmp_path):
  before = snapshot(trained_run)
  out = str(tmp_path / "ft")
  with pytest.raises(SystemExit) as exit_info:
    # A learning rate of 0: the run must end exactly on the source's weights.
    train.main([f"--model_dir={out}", f"--gin.INIT_FROM='{trained_run}'", "--gin.TRAIN_STEPS=3",
                "--gin.LEARNING_RATE=0.0", "--gin.OptimizerConfig.warmup_steps=2"] + FINETUNE)
  assert exit_info.value.code == 0
  assert snapshot(trained_run) == before
  rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]  # counter from 0, not 40
  assert os.listdir(os.path.join(out, "checkpoints")) == ["3"]
  source = read_params(os.path.join(trained_run, "checkpoints"))
  tuned = read_params(os.path.join(out, "checkpoints"))
  assert jax.tree.structure(source) == jax.tree.structure(tuned)
  for a, b in zip(jax.tree.leaves(source), jax.tree.leaves(tuned)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with open(os.path.join(out, "model.json")) as f, \
       open(os.path.join(trained_run, "model.json")) as g:
    assert json.load(f)["model"] == json.load(g)["model"]  # the model came from INIT_FROM


def test_finetune_without_init_from_is_a_user_error(tmp_path, capsys):
  out = tmp_path / "ft"
  train_fails([f"--model_dir={out}", "--gin.TRAIN_STEPS=2"] + FINETUNE, capsys, "set INIT_FROM")
  assert not out.exists()


def test_finetune_from_a_missing_directory_is_a_user_error(tmp_path, capsys):
  out = tmp_path / "ft"
  train_fails([f"--model_dir={out}", f"--gin.INIT_FROM='{tmp_path / 'nowhere'}'"] + FINETUNE,
         capsys, "no model.json")
  assert not out.exists()
