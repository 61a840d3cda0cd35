"""Checkpoints resume bit-exactly (after SIGKILL and SIGTERM), reshard across meshes, and skip
half-written steps."""
import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from lm.training.checkpoints import Checkpointer
from conftest import REPO

pytestmark = pytest.mark.slow  # subprocesses
from train_utils import char_batches, trainer_for

RUN = ["--gin_file=gin_configs/runs/shakespeare_char_cpu.gin",
       "--gin_file=gin_configs/models/nano.gin", "--gin.SEQ_LEN=32", "--gin.BATCH_SIZE=8",
       "--gin.TRAIN_STEPS=40", "--gin.LOG_EVERY=1", "--gin.EVAL_EVERY=0",
       "--gin.CHECKPOINT_EVERY=20", "--gin.MESH_SHAPE=(1,1,1)",
       "--gin.sample_after_training.num_tokens=0", "--gin.ModelConfig.max_len=32"]


def _train_cmd(model_dir):
  return [sys.executable, "-m", "lm.cli.train", f"--model_dir={model_dir}"] + RUN


def _losses(model_dir):
  """step -> train/loss; a resumed run's later line for a step wins."""
  out = {}
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "train/loss" in row:
        out[row["step"]] = row["train/loss"]
  return out


# Runs lm-train, but SIGKILLs itself when logging step 25 (once checkpoint 20 is complete):
# a real crash at a known point, with steps 21-25 lost.
_KILL_AT_25 = """
import os, signal, sys, time
from lm.cli import train
from lm.training import loop
write = loop.MetricsWriter.write
def write_then_die(self, step, scalars):
  write(self, step, scalars)
  if step == 25:
    done = os.path.join(sys.argv[1].split("=", 1)[1], "checkpoints", "20", "_CHECKPOINT_METADATA")
    while not os.path.exists(done):
      time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)
loop.MetricsWriter.write = write_then_die
train.main(sys.argv[1:])
"""


_ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """RUN's 40 steps uninterrupted (a subprocess); its MODEL_DIR."""
  straight = tmp_path_factory.mktemp("straight") / "run"
  subprocess.run(_train_cmd(straight), cwd=REPO, env=_ENV, check=True, capture_output=True)
  return straight


def _assert_same_losses(run, straight):
  expected, got = _losses(straight), _losses(run)
  assert sorted(got) == sorted(expected) == list(range(1, 41))
  assert [got[s] for s in range(1, 41)] == [expected[s] for s in range(1, 41)]


def test_sigkill_and_resume_is_bit_exact(tmp_path, straight_run):
  killed = tmp_path / "killed"
  crash = subprocess.run([sys.executable, "-c", _KILL_AT_25] + _train_cmd(killed)[3:],
                         cwd=REPO, env=_ENV, capture_output=True)
  assert crash.returncode == -signal.SIGKILL
  assert max(_losses(killed)) == 25
  # The dead run's lock on MODEL_DIR went with it: the resume is not refused.
  subprocess.run(_train_cmd(killed), cwd=REPO, env=_ENV, check=True, capture_output=True)
  _assert_same_losses(killed, straight_run)


# Runs lm-train and sends itself SIGTERM while logging step 25 (a preemption notice arriving
# mid-run): the loop saves checkpoint 25 and exits with 128 + SIGTERM.
_TERM_AT_25 = """
import os, signal, sys
from lm.cli import train
from lm.training import loop
write = loop.MetricsWriter.write
def write_then_term(self, step, scalars):
  write(self, step, scalars)
  if step == 25:
    os.kill(os.getpid(), signal.SIGTERM)
loop.MetricsWriter.write = write_then_term
train.main(sys.argv[1:])
"""
_NATIVE_LOG = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|^WARNING|^ERROR|Traceback")


def test_sigterm_saves_and_resume_is_bit_exact(tmp_path, straight_run):
  run = tmp_path / "run"
  term = subprocess.run([sys.executable, "-c", _TERM_AT_25] + _train_cmd(run)[3:],
                        cwd=REPO, env=_ENV, capture_output=True, text=True)
  assert term.returncode == 128 + signal.SIGTERM, term.stderr
  assert term.stderr.strip().splitlines()[-1] == (
      f"stopped by SIGTERM at step 25: checkpoint saved in {run}/checkpoints; run the same "
      "command to resume")
  assert sorted(os.listdir(run / "checkpoints")) == ["20", "25"]
  resume = subprocess.run(_train_cmd(run), cwd=REPO, env=_ENV, capture_output=True, text=True)
  assert resume.returncode == 0, resume.stderr
  _assert_same_losses(run, straight_run)
  # Start-up noise: stderr holds the progress bar and the warmup warning, no native logs.
  lines = [l for l in resume.stderr.replace("\r", "\n").splitlines() if l.strip()]
  assert not [l for l in lines if _NATIVE_LOG.search(l)], resume.stderr
  assert [l for l in lines if "%|" not in l] == [
      "warning: OptimizerConfig.warmup_steps=100 is longer than TRAIN_STEPS=40: the learning "
      "rate never reaches its peak"], resume.stderr


def _next_loss(trainer, state):
  _, metrics = trainer.step(state, char_batches()[3])
  return float(metrics["loss"])


def test_restore_onto_other_meshes(tmp_path):
  source = trainer_for((2, 4, 1))
  state, _ = source.losses(source.init(), char_batches()[:2])
  ckpt = Checkpointer(str(tmp_path), every=1)
  ckpt.save(2, state, {"batches": 2}, force=True)
  ckpt.wait()
  expected = _next_loss(source, state)
  saved = jax.device_get(state)
  for shape in [(2, 4, 1), (1, 1, 1), (1, 2, 4)]:
    target = trainer_for(shape)
    restored, data = ckpt.restore(2, target.abstract())
    assert data == {"batches": 2}
    emb = restored.params["embed"]["embedding"]
    assert emb.sharding == target.shardings.params["embed"]["embedding"]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), saved)  # bit-exact
    loss = _next_loss(target, restored)
    if shape == (2, 4, 1):
      assert loss == expected
    else:  # another mesh sums in another order: equal up to float rounding
      assert abs(loss - expected) < 1e-6
  ckpt.close()


def test_half_written_checkpoint_is_never_restored(tmp_path):
  trainer = trainer_for((1, 1, 1))
  state = trainer.init()
  ckpt = Checkpointer(str(tmp_path), every=1)
  ckpt.save(1, state, {"batches": 1}, force=True)
  ckpt.wait()
  ckpt.close()
  # What a crash mid-save leaves: Orbax's temporary directory for step 2, with partial data.
  partial = tmp_path / "2.orbax-checkpoint-tmp-1234"
  (partial / "params").mkdir(parents=True)
  (partial / "params" / "garbage").write_bytes(b"\0" * 100)
  ckpt = Checkpointer(str(tmp_path), every=1)
  assert ckpt.latest_step() == 1
  abstract = trainer.abstract()
  restored, data = ckpt.restore(ckpt.latest_step(), abstract)
  assert data == {"batches": 1}
  np.testing.assert_array_equal(restored.params["embed"]["embedding"],
                                state.params["embed"]["embedding"])
  ckpt.close()
