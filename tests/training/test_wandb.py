"""Weights & Biases logging of the same metrics and the operative config, offline."""
import glob
import json
import os

import pytest

from conftest import NANO_RUN, REPO
from lm.cli import train

wandb = pytest.importorskip("wandb")


@pytest.mark.slow
def test_wandb_offline_run_records_metrics_and_config(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  model_dir = tmp_path / "run"
  with pytest.raises(SystemExit) as exit_info:
    train.main([f"--model_dir={model_dir}", "--gin.TRAIN_STEPS=4", "--gin.LOG_EVERY=2",
                "--gin.EVAL_EVERY=0", "--gin.WANDB_PROJECT='lm-test'"] + NANO_RUN)
  assert exit_info.value.code == 0
  runs = glob.glob(str(model_dir / "wandb" / "offline-run-*"))
  assert len(runs) == 1
  # The W&B id is the run's own id (kept in run.json across resumes), not the dir's basename.
  run_id = json.load(open(model_dir / "run.json"))["run_id"]
  assert runs[0].endswith(f"-{run_id}") and len(run_id) == 32
  # The offline run's record log (synced later by `wandb sync`) holds both logged steps'
  # metrics and the config with the operative gin text.
  (log,) = glob.glob(os.path.join(runs[0], "*.wandb"))
  records = open(log, "rb").read()
  assert records.count(b"train/loss") == 2 and records.count(b"train/tokens_per_sec") == 2
  assert b"ModelConfig.d_model = 32" in records
