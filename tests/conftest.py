"""Test setup: 8 fake CPU devices (set before JAX is imported) and a private vocab cache."""
import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("LM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "lm-test-cache"))

import gin  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()

NANO_RUN = ["--gin_file=gin_configs/runs/shakespeare_char_cpu.gin",
            "--gin_file=gin_configs/models/nano.gin", "--gin.SEQ_LEN=32", "--gin.BATCH_SIZE=8",
            "--gin.LOG_EVERY=10", "--gin.EVAL_EVERY=20", "--gin.EVAL_STEPS=2",
            "--gin.CHECKPOINT_EVERY=20", "--gin.MESH_SHAPE=(-1,1,1)",
            "--gin.ModelConfig.max_len=32",
            # One step per call (the recipe runs 10): the signal and failure tests stop at an
            # exact step; tests/training/test_steps_per_call.py covers several.
            "--gin.train.steps_per_call=1",
            "--gin.sample_after_training.num_tokens=20"]  # last: NANO_RUN[:-1] drops it


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
  """A nano model trained for 40 steps by lm-train (in-process); its MODEL_DIR."""
  from lm.cli import train
  model_dir = str(tmp_path_factory.mktemp("run") / "nano")
  gin.clear_config()
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    with pytest.raises(SystemExit) as exit_info:
      train.main([f"--model_dir={model_dir}", "--gin.TRAIN_STEPS=40"] + NANO_RUN)
  finally:
    os.chdir(cwd)
    gin.clear_config()
  assert exit_info.value.code == 0
  return model_dir


# Fixtures that train a model, start subprocesses or run a Beam pipeline: their tests are `slow`
# (deselect with -m "not slow" for a quick loop); so are tests marked by hand.
SLOW_FIXTURES = {"trained_run", "lora_run", "quantized_dirs", "straight_run", "swept", "smollm2",
                 "planted", "prepared"}


def pytest_collection_modifyitems(items):
  for item in items:
    if SLOW_FIXTURES.intersection(item.fixturenames):
      item.add_marker(pytest.mark.slow)
  # Slow tests first (a stable sort keeps each file's order): with `-n 2 --dist loadfile` the
  # long files start early instead of leaving one worker busy at the end.
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
