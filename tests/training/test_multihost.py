"""Two CPU processes (gloo collectives) train an FSDP mesh like one process does, then sample."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # subprocesses

ARGS = ["--gin_file=gin_configs/runs/shakespeare_char_cpu.gin",
        "--gin_file=gin_configs/models/nano.gin", "--gin.SEQ_LEN=32", "--gin.BATCH_SIZE=8",
        "--gin.TRAIN_STEPS=2", "--gin.LOG_EVERY=1", "--gin.EVAL_EVERY=0",
        "--gin.MESH_SHAPE=(1,-1,1)", "--gin.ModelConfig.max_len=32",
        "--gin.InputConfig.num_shards=2"]


def _losses(model_dir):
  rows = [json.loads(l) for l in open(os.path.join(model_dir, "metrics.jsonl"))]
  return [r["train/loss"] for r in rows if "train/loss" in r]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  cmd = [sys.executable, "-m", "lm.cli.train"]
  port = _free_port()
  # Params are sharded over both hosts' devices: the sample at the end gathers them first.
  procs = [subprocess.Popen(cmd + ARGS + ["--gin.sample_after_training.num_tokens=5",
                                          f"--model_dir={tmp_path / 'multi'}",
                                          f"--coordinator_address=127.0.0.1:{port}",
                                          "--num_processes=2", f"--process_id={i}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  assert "sample" in outs[0] and "sample" not in outs[1]  # process 0 prints it
  single_env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  subprocess.run(cmd + ARGS + ["--gin.sample_after_training.num_tokens=0",
                               f"--model_dir={tmp_path / 'single'}"], cwd=REPO, env=single_env,
                 check=True, capture_output=True)
  multi, single = _losses(tmp_path / "multi"), _losses(tmp_path / "single")
  assert len(multi) == len(single) == 2
  np.testing.assert_allclose(multi, single, rtol=0, atol=1e-5)
