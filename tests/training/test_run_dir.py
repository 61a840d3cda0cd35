"""The run directory across starts: relative paths, resume checks, run id, failed starts."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from conftest import NANO_RUN, REPO
from lm.cli import train
from lm.errors import UserError
from lm.training import loop
from lm.training.optimizers import OptimizerConfig
from lm.training.step import LossConfig
from helpers import snapshot, train_fails
from train_utils import NANO

# NANO_RUN with absolute gin files, to run from any working directory.
ABS_RUN = [a.replace("--gin_file=", f"--gin_file={REPO}/") for a in NANO_RUN]


def _train(model_dir, *extra):
  with pytest.raises(SystemExit) as exit_info:
    train.main([f"--model_dir={model_dir}"] + ABS_RUN + list(extra))
  assert exit_info.value.code == 0


def _rows(model_dir):
  return [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]


@pytest.mark.slow
def test_relative_model_dir_trains_past_a_checkpoint_and_resumes(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  short = ["--gin.CHECKPOINT_EVERY=2", "--gin.LOG_EVERY=1", "--gin.EVAL_EVERY=0",
           "--gin.EVAL_STEPS=1", "--gin.sample_after_training.num_tokens=0",
           "--gin.OptimizerConfig.decay_steps=6",  # explicit: the run may be extended
           "--gin.OptimizerConfig.warmup_steps=2"]  # (no longer than decay_steps)
  _train("runs/x", "--gin.TRAIN_STEPS=4", *short)
  run = tmp_path / "runs" / "x"
  assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]
  run_id = json.load(open(run / "run.json"))["run_id"]
  # A crash that lost checkpoint 4: the resume restarts from 2 and logs steps 3 and 4 again.
  shutil.rmtree(run / "checkpoints" / "4")
  _train("runs/x", "--gin.TRAIN_STEPS=6", *short)
  steps = [r["step"] for r in _rows(run) if "train/loss" in r]
  assert steps == [1, 2, 3, 4, 5, 6]  # lines past the restored step were dropped, not doubled
  # TensorBoard's own reader hides the interrupted run's points past step 2 in the same way.
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  board = EventAccumulator(str(run / "tensorboard"))
  board.Reload()
  points = [(e.step, e.value) for e in board.Scalars("train/loss")]
  assert points == [(r["step"], pytest.approx(r["train/loss"], rel=1e-6))
                    for r in _rows(run) if "train/loss" in r]
  assert json.load(open(run / "run.json"))["run_id"] == run_id  # one W&B run across resumes
  assert sorted(os.listdir(run / "checkpoints")) == ["2", "4", "6"]


def test_harmless_model_changes_resume(trained_run, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  run = tmp_path / "copy"
  shutil.copytree(trained_run, run)
  _train(run, "--gin.TRAIN_STEPS=40", "--gin.ModelConfig.remat='full'",
         "--gin.ModelConfig.dtype='bfloat16'", "--gin.ModelConfig.attention_backend='xla'",
         "--gin.ModelConfig.dropout_rate=0.1", "--gin.MESH_SHAPE=(2,4,1)")
  assert json.load(open(run / "model.json"))["model"]["remat"] == "full"
  run_id = json.load(open(os.path.join(trained_run, "run.json")))["run_id"]
  assert json.load(open(run / "run.json"))["run_id"] == run_id


@pytest.mark.parametrize("extra, message", [
    (["--gin.TRAIN_STEPS=41"], "optimizer.decay_steps: 40 -> 41"),
    (["--gin.BATCH_SIZE=16"], "input.batch_size: 8 -> 16"),
    (["--gin.SEQ_LEN=16"], "input.seq_len: 32 -> 16"),
    (["--gin.SEED=1"], "input.seed: 0 -> 1"),
    (["--gin.InputConfig.num_shards=2"], "input.num_shards: 1 -> 2"),
    (["--gin.OptimizerConfig.name='adafactor'"], "optimizer.name: 'adamw' -> 'adafactor'"),
    (["--gin.ModelConfig.param_dtype='bfloat16'"], "ModelConfig.param_dtype"),
    (["--gin.ModelConfig.scan_layers=True"], "ModelConfig.scan_layers: False -> True"),
    (["--gin.ModelConfig.d_model=64", "--gin.BATCH_SIZE=16"],
     "ModelConfig.d_model: 32 -> 64; input.batch_size: 8 -> 16"),
])
def test_resume_refuses_other_settings(trained_run, capsys, monkeypatch, extra, message):
  monkeypatch.chdir(REPO)
  before = snapshot(trained_run)
  train_fails([f"--model_dir={trained_run}", "--gin.TRAIN_STEPS=40"] + NANO_RUN + extra, capsys,
         message)
  assert snapshot(trained_run) == before


def test_failed_init_from_creates_nothing(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  train_fails(["--model_dir=run", "--gin.TRAIN_STEPS=2", "--gin.train.init_from='elsewhere'"]
         + ABS_RUN, capsys, "cannot initialize from")
  assert os.listdir(tmp_path) == []  # neither run/checkpoints nor elsewhere/checkpoints


class _Batches:
  """Random char-like training batches; validation batches that are all padding (or none)."""

  def __init__(self, cfg, split, start=0, *, validation_batches=1):
    self.split, self.state, self.vocab_size = split, start, 68
    self._left = validation_batches if split == "validation" else None

  def restore(self, batches):
    self.state = batches

  def __iter__(self):
    return self

  def __next__(self):
    if self._left is not None:
      if not self._left:
        raise StopIteration
      self._left -= 1
    rng = np.random.default_rng(self.state)
    self.state += 1
    tokens = rng.integers(0, 68, (8, 17), dtype=np.int32)
    weights = np.full((8, 16), 0 if self.split == "validation" else 1, np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}


@dataclasses.dataclass(frozen=True)
class _InputConfig:
  batch_size: int = 8
  seq_len: int = 16
  task: str | None = None


def _loop(model_dir, batches_fn, **kw):
  return loop.train(str(model_dir), model_cfg=NANO, input_cfg=_InputConfig(),
                    batches_fn=batches_fn, steps=2, log_every=1, eval_every=1, eval_steps=3,
                    mesh_shape=(-1, 1, 1), progress=False, **kw)


@pytest.mark.slow
def test_empty_validation_split_is_refused_at_start(tmp_path):
  empty = lambda cfg, split, start=0: _Batches(cfg, split, start, validation_batches=0)
  with pytest.raises(UserError, match="validation split .* is empty; set EVAL_STEPS=0"):
    _loop(tmp_path / "run", empty)
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_nll_beside_loss_and_no_nan_evals(tmp_path):
  _loop(tmp_path / "run", _Batches, optimizer_cfg=OptimizerConfig(warmup_steps=0),
        loss_cfg=LossConfig(z_loss=1e-2))
  rows = _rows(tmp_path / "run")
  assert not [r for r in rows if "eval/loss" in r]  # all-padding validation: skipped, no NaN
  train_rows = [r for r in rows if "train/loss" in r]
  assert len(train_rows) == 2
  for r in train_rows:
    # train/nll is the plain cross-entropy (what eval/loss reports): about log(68) untrained;
    # train/loss adds the z-loss.
    assert abs(r["train/nll"] - np.log(68)) < 0.5
    np.testing.assert_allclose(r["train/loss"] - r["train/nll"], r["train/z_loss"], rtol=1e-4)
