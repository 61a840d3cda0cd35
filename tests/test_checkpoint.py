"""Checkpoints resume bit-exactly, reshard across meshes, and skip half-written steps."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np

from lm.training.checkpoints import Checkpointer
from conftest import REPO
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


def test_sigkill_and_resume_is_bit_exact(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  subprocess.run(_train_cmd(straight), cwd=REPO, env=env, check=True, capture_output=True)
  crash = subprocess.run([sys.executable, "-c", _KILL_AT_25] + _train_cmd(killed)[3:],
                         cwd=REPO, env=env, capture_output=True)
  assert crash.returncode == -signal.SIGKILL
  assert max(_losses(killed)) == 25
  subprocess.run(_train_cmd(killed), cwd=REPO, env=env, check=True, capture_output=True)

  expected, got = _losses(straight), _losses(killed)
  assert sorted(got) == sorted(expected) == list(range(1, 41))
  assert [got[s] for s in range(1, 41)] == [expected[s] for s in range(1, 41)]


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
