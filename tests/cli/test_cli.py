"""lm-train end to end: outputs of a run, and bad input -> one clear message, exit 2, no damage."""
import json
import os
import subprocess
import sys

import pytest

from conftest import NANO_RUN, REPO
from helpers import snapshot, train_fails
from lm import tokenizers
from lm.cli import train
from lm.model_dir import read_config
from lm.models.config import flops_per_token


def test_run_writes_metrics_config_and_checkpoints(trained_run):
  rows = [json.loads(line) for line in open(os.path.join(trained_run, "metrics.jsonl"))]
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [10, 20, 30, 40]
  for key in ("train/loss", "train/tokens_per_sec", "train/grad_norm", "train/lr"):
    assert all(key in r for r in train_rows)
  assert "train/mfu" not in train_rows[0]  # CPU: no known peak, so no made-up MFU
  # Achieved FLOP/s per device = flops_per_token x tokens/s / devices (8 fake devices).
  cfg = read_config(trained_run)
  assert train_rows[-1]["train/gflops_per_sec"] * 1e9 * 8 == pytest.approx(
      flops_per_token(cfg, 32) * train_rows[-1]["train/tokens_per_sec"])
  evals = [r for r in rows if "eval/loss" in r]
  assert [r["step"] for r in evals] == [20, 40] and evals[1]["eval/loss"] < evals[0]["eval/loss"]
  assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"]
  config = open(os.path.join(trained_run, "config.gin")).read()
  assert "ModelConfig.d_model = 32" in config and "TRAIN_STEPS = 40" in config
  assert sorted(os.listdir(os.path.join(trained_run, "checkpoints"))) == ["20", "40"]
  assert os.listdir(os.path.join(trained_run, "tensorboard"))
  run = json.load(open(os.path.join(trained_run, "run.json")))
  assert run["input"]["batch_size"] == 8 and run["optimizer"]["decay_steps"] == 40
  # The task's tokenizer travels with the run (decoding needs no TensorFlow).
  assert os.path.isfile(os.path.join(tokenizers.tokenizer_dir(trained_run), tokenizers.CHARS_FILE))
  assert all("train/nll" in r for r in train_rows)


@pytest.fixture
def in_repo(monkeypatch):
  monkeypatch.chdir(REPO)


def _files_task(tmp_path, name, content: bytes):
  path = tmp_path / name
  path.write_bytes(content)
  return ["--gin.InputConfig.task=@register_files_task()",
          "--gin.register_files_task.name='user_files'",
          f"--gin.register_files_task.split_patterns={{'train': '{path}', "
          f"'validation': '{path}'}}",
          "--gin.register_files_task.vocabulary=@shakespeare_char_vocabulary()",
          "--gin.InputConfig.continuous=False"]


@pytest.mark.parametrize("extra, message", [
    (["--gin_file=gin_configs/runs/nope.gin"], "gin file not found"),
    (["--gin.ModelConfig.no_such_field=1"], "bad gin config"),
    (["--gin.MESH_SHAPE=(3,1,1)"], "needs 3 devices"),
    (["--gin.MESH_SHAPE=(8,1,1)", "--gin.BATCH_SIZE=12"], "not divisible by the data-parallel"),
    (["--gin.MESH_SHAPE=(1,1,8)"], "num_heads=4 is not divisible by the tensor axis size 8"),
    (["--gin.TASK='no_such_task'"], "unknown task"),
    (["--gin.ModelConfig.num_heads=0"], "ModelConfig: num_heads must be a positive integer"),
    (["--gin.ModelConfig.activation='nope'"], "ModelConfig: unknown activation 'nope'"),
    (["--gin.MESH_SHAPE=(2,1,4)", "--gin.ModelConfig.mlp_dim=66"],
     "ModelConfig.mlp_dim=66 is not divisible by the tensor axis size 4"),
    (["--gin.MESH_SHAPE=(1,1,8)", "--gin.ModelConfig.num_heads=8"],
     "ModelConfig.vocab_size=68 (padded: 68) is not divisible by the tensor axis size 8"),
    (["--gin.MESH_SHAPE=(1,8,1)", "--gin.ModelConfig.d_model=36", "--gin.ModelConfig.num_heads=2"],
     "ModelConfig.d_model=36 is not divisible by the fsdp axis size 8"),
    (["--gin.ModelConfig.vocab_size=60"],
     "ModelConfig.vocab_size=60 is smaller than the vocabulary of task 'tiny_shakespeare_char' "
     "(68 tokens)"),
    # Numeric knobs, checked before anything runs (lm/training/validate.py).
    (["--gin.BATCH_SIZE=0"], "BATCH_SIZE (batch_size) must be a positive integer, got 0"),
    (["--gin.TRAIN_STEPS=0"], "TRAIN_STEPS (train.steps) must be a positive integer, got 0"),
    (["--gin.TRAIN_STEPS=2.5"], "TRAIN_STEPS (train.steps) must be a positive integer, got 2.5"),
    (["--gin.SEQ_LEN=-4"], "SEQ_LEN (seq_len) must be a positive integer, got -4"),
    (["--gin.LEARNING_RATE=-0.1"],
     "LEARNING_RATE (OptimizerConfig.learning_rate) must be a finite number >= 0.0, got -0.1"),
    (["--gin.LEARNING_RATE=1e999"], "must be a finite number >= 0.0, got inf"),
    (["--gin.OptimizerConfig.decay_steps=50"],
     "OptimizerConfig.warmup_steps=100 is longer than OptimizerConfig.decay_steps=50"),
    (["--gin.OptimizerConfig.warmup_steps=-1"], "OptimizerConfig.warmup_steps must be an integer"),
    (["--gin.OptimizerConfig.b2=1.0"], "OptimizerConfig.b2 must be a finite number >= 0.0 and < 1.0"),
    (["--gin.LOG_EVERY=0"], "LOG_EVERY (train.log_every) must be a positive integer, got 0"),
    (["--gin.EVAL_EVERY=-1"], "EVAL_EVERY (train.eval_every) (0: only at the end) must be an "
     "integer >= 0, got -1"),
    (["--gin.EVAL_STEPS=-2"], "EVAL_STEPS (train.eval_steps) (0: no evals) must be an integer"),
    (["--gin.CHECKPOINT_EVERY=0"], "CHECKPOINT_EVERY (train.checkpoint_every) must be a positive"),
    (["--gin.train.keep_checkpoints=0"], "train.keep_checkpoints must be a positive integer"),
    (["--gin.train.grad_accum_steps=0"], "train.grad_accum_steps must be a positive integer"),
    (["--gin.train.grad_accum_steps=3"],
     "BATCH_SIZE=8 is not divisible by grad_accum_steps=3"),
    (["--gin.LossConfig.label_smoothing=1.0"], "LossConfig.label_smoothing must be a finite"),
    (["--gin.train.nonfinite='ignore'"], "train.nonfinite must be 'stop' or 'skip', got 'ignore'"),
])
def test_bad_flags(trained_run, in_repo, capsys, extra, message):
  before = snapshot(trained_run)
  train_fails([f"--model_dir={trained_run}"] + NANO_RUN + extra, capsys, message)
  assert snapshot(trained_run) == before


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "data file is empty"),
    ("bad.txt", b"fine line\n\xff\xfe broken\n", "invalid UTF-8 near byte 10"),
])
def test_bad_data_files(trained_run, in_repo, capsys, tmp_path, name, content, message):
  before = snapshot(trained_run)
  train_fails([f"--model_dir={trained_run}"] + NANO_RUN + _files_task(tmp_path, name, content),
         capsys, message)
  assert snapshot(trained_run) == before


def test_missing_data_file(in_repo, capsys, tmp_path):
  args = _files_task(tmp_path, "x.txt", b"x")
  args[2] = "--gin.register_files_task.split_patterns={'train': '/nonexistent/*.txt'}"
  train_fails([f"--model_dir={tmp_path / 'run'}"] + NANO_RUN + args, capsys, "no data file matches")
  assert not (tmp_path / "run").exists()


def test_different_model_in_existing_dir(trained_run, in_repo, capsys):
  before = snapshot(trained_run)
  train_fails([f"--model_dir={trained_run}"] + NANO_RUN + ["--gin.ModelConfig.d_model=64"], capsys,
         "holds a different run (saved -> configured: ModelConfig.d_model: 32 -> 64")
  assert snapshot(trained_run) == before


@pytest.mark.slow
def test_trains_on_local_text_files(in_repo, tmp_path):
  lines = open(os.path.join(REPO, "lm/data/assets/tinyshakespeare.txt")).read().splitlines()
  text = "\n".join(l for l in lines[:3000] if l.strip()).encode()
  model_dir = tmp_path / "run"
  with pytest.raises(SystemExit) as exit_info:
    train.main([f"--model_dir={model_dir}", "--gin.TRAIN_STEPS=4", "--gin.EVAL_EVERY=0",
                "--gin.LOG_EVERY=2", "--gin.sample_after_training.num_tokens=0"]
               + NANO_RUN[:-1] + _files_task(tmp_path, "corpus.txt", text))
  assert exit_info.value.code == 0
  rows = [json.loads(l) for l in open(model_dir / "metrics.jsonl") if "train/loss" in l]
  assert rows[-1]["step"] == 4 and 0 < rows[-1]["train/loss"] < 5


@pytest.mark.slow
def test_console_script_prints_sample_and_clean_errors(tmp_path):
  bad = subprocess.run([sys.executable, "-m", "lm.cli.train", "--model_dir", str(tmp_path),
                        "--gin_file=missing.gin"], capture_output=True, text=True, cwd=REPO)
  assert bad.returncode == 2 and bad.stderr.strip().endswith("gin file not found: missing.gin")


@pytest.mark.parametrize("tasks, message", [
    ("['arc_eazy']", "unknown task 'arc_eazy'; known tasks: "),
    ("['ppl:/nonexistent/val.txt']", "no file matches '/nonexistent/val.txt'"),
    ("'arc_easy'", "EvalTasks.tasks must be a list of task names, got 'arc_easy'"),
    # A benchmark file missing from EvalTasks.data_dir.
    ("['copa']", "copa/copa.jsonl does not exist"),
])
def test_bad_eval_tasks_fail_before_training(in_repo, capsys, tmp_path, tasks, message):
  run = tmp_path / "run"
  train_fails([f"--model_dir={run}", "--gin.TRAIN_STEPS=2", "--gin.train.hooks=[@EvalTasks()]",
          f"--gin.EvalTasks.tasks={tasks}", f"--gin.EvalTasks.data_dir='{tmp_path}'"] + NANO_RUN,
         capsys, message)
  assert not run.exists()  # nothing trained, nothing written
