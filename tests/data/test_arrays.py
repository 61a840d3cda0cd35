"""Exported arrays and synthetic batches: TF-free inputs that lm-train accepts."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from lm.data.arrays import ArrayInputConfig, array_batches, synthetic_batches, SyntheticInputConfig
from lm.data.export import export_split
from lm.data.inputs import InputConfig, make_batches


def test_export_round_trip_and_epoch_shuffle(tmp_path):
  cfg = InputConfig(batch_size=4, seq_len=16, continuous=True, num_shards=1)
  assert export_split(cfg, "train", 10, str(tmp_path)) == 8
  original = [next(it) for it in [make_batches(cfg, "train")] for _ in range(2)]
  stored = np.load(tmp_path / "train" / "inputs.npy")
  np.testing.assert_array_equal(stored, np.concatenate([b["inputs"] for b in original]))

  acfg = ArrayInputConfig(path=str(tmp_path), batch_size=4, seq_len=16, seed=1)
  it = array_batches(acfg, "train")
  epoch0 = np.concatenate([next(it)["inputs"] for _ in range(2)])
  assert sorted(map(tuple, epoch0)) == sorted(map(tuple, stored))  # every row once per epoch
  third = next(it)
  np.testing.assert_array_equal(next(array_batches(acfg, "train", start=2))["inputs"],
                                third["inputs"])
  assert set(third) == {"inputs", "targets", "weights"}


def test_synthetic_batches_are_seeded():
  cfg = SyntheticInputConfig(vocab_size=50, batch_size=2, seq_len=8)
  a, b = next(synthetic_batches(cfg, "train")), next(synthetic_batches(cfg, "train", start=0))
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  np.testing.assert_array_equal(a["inputs"][:, 1:], a["targets"][:, :-1])
  assert a["inputs"].max() < 50


TF_FREE_TRAIN = """
import sys
for name in ("tensorflow", "seqio", "tensorflow_datasets"):
  sys.modules[name] = None
from lm.cli import train
train.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_lm_train_runs_without_tensorflow_on_exported_arrays(tmp_path):
  export_split(InputConfig(batch_size=8, seq_len=32, continuous=True, num_shards=1), "train",
               64, str(tmp_path / "np"))
  export_split(InputConfig(batch_size=8, seq_len=32, continuous=True, num_shards=1),
               "validation", 16, str(tmp_path / "np"))
  args = ["--gin_file=gin_configs/runs/shakespeare_char_cpu.gin",
          "--gin_file=gin_configs/models/nano.gin", f"--model_dir={tmp_path / 'run'}",
          "--gin.train.input_cfg=@ArrayInputConfig()", "--gin.train.batches_fn=@array_batches",
          f"--gin.ArrayInputConfig.path='{tmp_path / 'np'}'", "--gin.ArrayInputConfig.seq_len=32",
          "--gin.ArrayInputConfig.batch_size=8", "--gin.ArrayInputConfig.task='tiny_shakespeare_char'",
          "--gin.TRAIN_STEPS=6", "--gin.LOG_EVERY=3", "--gin.EVAL_EVERY=6", "--gin.EVAL_STEPS=2",
          "--gin.ModelConfig.max_len=32", "--gin.MESH_SHAPE=(1,1,1)"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = subprocess.run([sys.executable, "-c", TF_FREE_TRAIN] + args, cwd=REPO, env=env,
                       capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "SeqIO input unavailable" in out.stdout and "no sample" in out.stdout
  rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert [r["step"] for r in rows if "train/loss" in r] == [3, 6]
  assert any("eval/loss" in r for r in rows)
