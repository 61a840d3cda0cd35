"""Training's failure behaviour: non-finite steps, signals, full disks, corrupt checkpoints,
concurrent runs (the bit-exact SIGTERM resume is in test_checkpoint.py, config errors in
test_cli.py)."""
import dataclasses
import functools
import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import NANO_RUN, REPO
from lm.cli import train
from lm.errors import UserError
from lm.evaluation.training import EvalTasks
from lm.models.transformer import Transformer
from lm.sharding import DEFAULT_RULES, batch_sharding, global_batch, use_mesh
from lm.model_dir import latest_step, read_params
from lm.training import checkpoints, loop
from lm.training.guards import NonFiniteError, NonFiniteGuard
from lm.training.optimizers import OptimizerConfig, make_optimizer
from lm.training.preemption import Preempted
from lm.training.run_lock import RunLock
from lm.training.state import create_state, state_shardings
from lm.training.step import LossConfig, train_step
from helpers import snapshot, train_fails
from train_utils import NANO, mesh_of

ABS_RUN = [a.replace("--gin_file=", f"--gin_file={REPO}/") for a in NANO_RUN]


class _Batches:
  """Random char-like batches; the batches of `nan_steps` (1-based) carry a NaN weight, and
  reading the batch of `signal_at` sends this process SIGINT (a Ctrl-C during that step)."""

  def __init__(self, cfg, split, start=0, *, nan_steps=(), signal_at=None):
    self.state, self.vocab_size = start, 68
    self.nan_steps, self.signal_at = nan_steps, signal_at

  def restore(self, batches):
    self.state = batches

  def __iter__(self):
    return self

  def __next__(self):
    rng = np.random.default_rng(self.state)
    self.state += 1
    if self.state == self.signal_at:
      signal.raise_signal(signal.SIGINT)
    tokens = rng.integers(0, 68, (8, 17), dtype=np.int32)
    weights = np.ones((8, 16), np.float32)
    if self.state in self.nan_steps:
      weights[0, 0] = np.nan
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}


@dataclasses.dataclass(frozen=True)
class _InputConfig:
  batch_size: int = 8
  seq_len: int = 16
  task: str | None = None


def _loop(model_dir, steps=6, log_every=1, eval_every=0, **kw):
  batches = functools.partial(_Batches, nan_steps=kw.pop("nan_steps", ()),
                              signal_at=kw.pop("signal_at", None))
  return loop.train(str(model_dir), model_cfg=NANO, input_cfg=_InputConfig(),
                    batches_fn=batches, steps=steps, log_every=log_every, eval_every=eval_every,
                    eval_steps=0, checkpoint_every=2, mesh_shape=(-1, 1, 1), progress=False,
                    optimizer_cfg=OptimizerConfig(warmup_steps=0), **kw)


def _rows(model_dir):
  return [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]


def _ckpts(model_dir):
  return sorted(int(s) for s in os.listdir(os.path.join(model_dir, "checkpoints")) if s.isdigit())


def test_infinite_learning_rate_is_flagged_and_skipped_inside_the_step():
  mesh, model = mesh_of((1, 1, 1)), Transformer(NANO)
  tx = make_optimizer(OptimizerConfig(learning_rate=math.inf, warmup_steps=0,
                                      decay="constant"), 10)
  with use_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    shardings = state_shardings(model, tx, mesh, 16)
    state = create_state(model, tx, shardings, 16, 0)
    before = jax.device_get(state)
    step = jax.jit(functools.partial(train_step, model=model, tx=tx, loss_cfg=LossConfig(),
                                     skip_nonfinite=True))
    after, metrics = step(state, global_batch(mesh, next(_Batches(None, "train"))))
  # The loss and gradients were finite; the updated params were not: flagged, not applied.
  assert float(metrics["nonfinite"]) == 1.0 and int(after.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after.params), before.params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after.opt_state), before.opt_state)
  assert float(metrics["loss"]) == 0.0  # zeroed: not averaged into train/loss


def test_guard_counts_consecutive_skips():
  def first_error(policy, flags, k=3):
    guard = NonFiniteGuard(policy, k)
    counts = guard.zeros()
    for step, flag in enumerate(flags, 1):
      counts = guard.update(counts, step, np.float32(flag))
      try:
        guard.check(counts, last_checkpoint=step - 1)
      except NonFiniteError as e:
        return step, str(e)
    return None, None

  assert first_error("skip", [0, 1, 1, 0, 1, 1, 0, 0]) == (None, None)  # never 3 in a row
  step, message = first_error("skip", [0, 1, 1, 1, 1, 0])
  assert step == 4 and message.startswith("3 consecutive steps with non-finite loss or "
                                          "gradients were skipped (up to step 4;")
  step, message = first_error("stop", [0, 0, 1, 0])
  assert step == 3 and message.startswith("non-finite loss or gradients at step 3; the last "
                                          "checkpoint (step 2) is kept")
  # Checked only now and then (as the loop does): the first bad step and the run that reached
  # the limit are still named, though later steps were finite.
  for policy, flags, expected in [("stop", [0, 1, 0, 1, 0], "at step 2"),
                                  ("skip", [1, 1, 1, 0, 0], "(up to step 3;")]:
    guard = NonFiniteGuard(policy, 3)
    counts = guard.zeros()
    for step, flag in enumerate(flags, 1):
      counts = guard.update(counts, step, np.float32(flag))
    with pytest.raises(NonFiniteError, match=re.escape(expected)):
      guard.check(counts, last_checkpoint=None)


@pytest.mark.slow
def test_nan_batch_stops_the_run_keeping_the_last_checkpoint(tmp_path):
  run = tmp_path / "run"
  # Step 5's batch is NaN; the guard is read at the next log (step 6), before the checkpoint.
  with pytest.raises(NonFiniteError, match=r"non-finite loss or gradients at step 5; the last "
                     r"checkpoint \(step 4\) is kept and nothing newer was written"):
    _loop(run, log_every=3, nan_steps=(5,))
  assert _ckpts(run) == [2, 4]
  assert [r["step"] for r in _rows(run)] == [3]  # the window holding step 5 was not logged
  assert latest_step(str(run / "checkpoints")) == 4


@pytest.mark.slow
def test_skip_policy_skips_and_counts(tmp_path):
  run = tmp_path / "skip"
  _loop(run, log_every=3, nan_steps=(3, 4), nonfinite="skip", max_consecutive_skips=3)
  rows = _rows(run)
  assert [(r["step"], r["train/skipped_steps"]) for r in rows] == [(3, 1), (6, 1)]
  assert all(np.isfinite(r["train/loss"]) and 3 < r["train/loss"] < 6 for r in rows)
  assert _ckpts(run) == [2, 4, 6]
  params = read_params(str(run / "checkpoints"))
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))



@pytest.mark.slow
def test_sigint_saves_at_the_current_step_and_stops(tmp_path):
  # The bit-exact resume after a signal: test_checkpoint.py::test_sigterm_and_resume_is_bit_exact.
  run = tmp_path / "run"
  before = signal.getsignal(signal.SIGINT)  # SIG_IGN where pytest runs in the background
  with pytest.raises(Preempted, match="stopped by SIGINT at step 3: checkpoint saved in") as e:
    _loop(run, signal_at=3)
  assert e.value.exit_code == 128 + signal.SIGINT
  assert signal.getsignal(signal.SIGINT) is before  # the caller's handler restored
  assert _ckpts(run) == [2, 3] and [r["step"] for r in _rows(run)] == [1, 2, 3]
  assert json.load(open(run / "checkpoints" / "3" / "data" / "metadata")) == {"batches": 3}


@pytest.mark.slow
def test_second_run_on_a_model_dir_is_refused(tmp_path):
  run = tmp_path / "run"
  holder = RunLock(str(run))  # another run holding the directory
  before = snapshot(run)
  with pytest.raises(UserError, match=f"another run is training in {run} \\(holder: host "):
    _loop(run)
  assert snapshot(run) == before
  holder.release()  # the OS drops the lock with its holder (see test_checkpoint's SIGKILL test)
  RunLock(str(run)).release()


def test_corrupt_latest_checkpoint_falls_back_to_the_newest_good_one(trained_run, tmp_path,
                                                                     capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  run = tmp_path / "run"
  shutil.copytree(trained_run, run)
  # Every data file of the newest train state cut short (OCDBT may keep superseded files that
  # a restore never reads, so cutting only one can leave the step readable).
  for data_file in glob.glob(f"{run}/checkpoints/40/train/ocdbt.process_0/d/*"):
    os.truncate(data_file, min(os.path.getsize(data_file), 100) // 2)
  args = [f"--model_dir={run}", "--gin.TRAIN_STEPS=40", "--gin.sample_after_training.num_tokens=0"]
  with pytest.raises(SystemExit) as exit_info:
    train.main(args + NANO_RUN[:-1])
  assert exit_info.value.code == 0
  err = capsys.readouterr().err
  assert (f"warning: checkpoint step 40 in {run}/checkpoints is unreadable" in err
          and f"moved to {run}/corrupt_checkpoints/40, resuming from step 20" in err)
  assert _ckpts(run) == [20, 40] and os.listdir(run / "corrupt_checkpoints") == ["40"]
  # Steps 21-40 again from checkpoint 20: the same losses as the original run.
  key = lambda r: (r["step"], r.get("train/loss"), r.get("eval/loss"))
  assert [key(r) for r in _rows(run)] == [key(r) for r in _rows(trained_run)]

  # Nothing restorable: refused, nothing trained.
  for step in (20, 40):
    shutil.rmtree(run / "checkpoints" / str(step) / "params")
  before = snapshot(run)
  train_fails(args + NANO_RUN[:-1], capsys, "(no older step restores either)")
  assert snapshot(run) == before


# lm-train with files limited to 32 KB (RLIMIT_FSIZE; SIGXFSZ ignored, so a write past the
# limit fails with EFBIG as on a full disk): run.json or metrics.jsonl fit, a checkpoint does not.
_FILE_SIZE_LIMIT = """
import resource, signal, sys
from lm.cli import train
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))
train.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_full_disk_while_checkpointing_keeps_earlier_checkpoints(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  run = tmp_path / "run"
  args = [f"--model_dir={run}", "--gin.CHECKPOINT_EVERY=2", "--gin.EVAL_STEPS=0",
          "--gin.OptimizerConfig.warmup_steps=0", "--gin.OptimizerConfig.decay_steps=4",
          "--gin.sample_after_training.num_tokens=0"]
  with pytest.raises(SystemExit) as exit_info:
    train.main(args + ABS_RUN[:-1] + ["--gin.TRAIN_STEPS=2"])
  assert exit_info.value.code == 0
  params_2 = read_params(str(run / "checkpoints"))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  full = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMIT] + args + ABS_RUN[:-1]
                        + ["--gin.TRAIN_STEPS=4", "--gin.MESH_SHAPE=(1,1,1)"],
                        env=env, capture_output=True, text=True)
  assert full.returncode == 1, full.stderr
  # The error line. Orbax's dying background writers print tracebacks concurrently, so in CI the
  # message has ended a "RuntimeError: " line or followed a traceback's indent on the same line (a
  # known race, see docs/training.md, "Failure behaviour"); never a traceback through lm's code.
  message = f"error: cannot write a checkpoint to {run}/checkpoints: "
  errors = [l[l.index(message):] for l in full.stderr.splitlines() if message in l]
  assert errors, full.stderr
  assert errors[0].endswith("the complete checkpoints are intact (steps: [2])"), errors[0]
  assert f'File "{REPO}/lm/' not in full.stderr
  assert latest_step(str(run / "checkpoints")) == 2
  jax.tree.map(np.testing.assert_array_equal,
               read_params(str(run / "checkpoints")), params_2)


@pytest.mark.slow
def test_injected_hooks_and_optimizer_wrappers(tmp_path):
  """The loop's features come from outside: a hook runs at every eval step on the model's
  params and its scalars are logged there; each optimizer wrapper gets tx and init_from."""
  seen, wrapped = [], []

  def hook(info):
    seen.append((info.step, info.model_dir, jax.tree.leaves(info.params)[0].shape))
    return {"hook/step": float(info.step)}

  def freeze(tx, init_from):  # an optimizer wrapper whose updates are zero: params stay put
    wrapped.append(init_from)
    return optax.chain(tx, optax.scale(0.0))

  run = tmp_path / "run"
  result = _loop(run, steps=5, eval_every=2, hooks=[hook], optimizer_wrappers=[freeze])
  shape = jax.tree.leaves(result.state.params)[0].shape
  assert seen == [(2, str(run), shape), (4, str(run), shape), (5, str(run), shape)]
  assert [r["step"] for r in _rows(run) if "hook/step" in r] == [2, 4, 5]
  assert wrapped == [None]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(result.state.params),
               read_params(str(run / "checkpoints"), 2))  # steps 3-5 moved none


def test_eval_tasks_during_training(trained_run, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(os.path.join(trained_run, "tokenizer"), run / "tokenizer")  # a char run's
  text = tmp_path / "val.txt"
  text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
  task = f"ppl:{text}"
  _loop(run, steps=4, eval_every=2, hooks=[EvalTasks([task], data_dir=str(tmp_path))])
  rows = [r for r in _rows(run) if f"eval/{task}/bits_per_byte" in r]
  assert [r["step"] for r in rows] == [2, 4]
  # The same figures from the saved checkpoint through lm-eval's own path.
  import lm
  report = lm.evaluate(lm.load(str(run)), tasks=[task])
  for metric, value in report["results"][task].items():
    assert rows[-1][f"eval/{task}/{metric}"] == pytest.approx(value, rel=1e-5)
