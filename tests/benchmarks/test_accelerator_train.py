"""benchmarks/accelerator_train.py --smoke, in-process on the 8 fake CPU devices (FSDP over 8)."""
import importlib.util
import math
import os

from conftest import REPO
from lm.models.config import num_params


def _load():
  path = os.path.join(REPO, "benchmarks", "accelerator_train.py")
  spec = importlib.util.spec_from_file_location("accelerator_train", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _table(out: str) -> dict[str, str]:
  rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ")]
  return {k.strip(): v.strip() for k, v in rows}


def test_smoke_prints_a_sane_table(capsys):
  bench = _load()
  assert bench.main(["--smoke", "--steps=2"]) == 0
  out = capsys.readouterr().out
  assert "attention: xla" in out  # the implementation the compiled step holds, logged
  table = _table(out)
  cfg = bench.model_config("llama3_2_1b", smoke=True, remat=None, bindings=[])
  assert (cfg.num_layers, cfg.d_model, cfg.dtype, cfg.param_dtype) == (2, 64, "bfloat16",
                                                                         "float32")
  assert table["params"] == f"{num_params(cfg):,}"  # the state as built, vs the formula
  assert table["devices"].startswith("8 ")
  assert table["global batch"].startswith("16 ")  # 2 rows per device
  assert table["seq len"] == "32"
  assert float(table["tokens/s/device"].replace(",", "")) > 0
  assert float(table["achieved TFLOP/s/device"]) >= 0
  assert table["MFU"] == "n/a" and table["peak memory"] == "n/a"  # CPU: no peak, no stats
  assert math.isfinite(float(table["loss (last step)"]))
  assert float(table["step time median (ms)"]) > 0


def test_bad_flag_is_one_error_line(capsys):
  assert _load().main(["--smoke", "--per_device_batch=0"]) == 2
  assert capsys.readouterr().err.startswith("error: --per_device_batch")
