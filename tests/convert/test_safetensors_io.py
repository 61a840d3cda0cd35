"""lm.convert.safetensors_io: what torch writes is read exactly, bfloat16 included; what lm
writes loads in torch."""
import ml_dtypes
import numpy as np
import pytest

from lm.convert import safetensors_io
from lm.errors import UserError

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def test_torch_bfloat16_and_float32_tensors_read_exactly(tmp_path):
  tensors = {"w": torch.randn(3, 5).to(torch.bfloat16), "b": torch.randn(5),
             "i": torch.arange(4, dtype=torch.int64)}
  safetensors_torch.save_file(tensors, str(tmp_path / "model.safetensors"))
  got = safetensors_io.read_dir(str(tmp_path))
  assert got["w"].dtype == ml_dtypes.bfloat16 and got["b"].dtype == np.float32
  np.testing.assert_array_equal(got["w"].astype(np.float32), tensors["w"].float().numpy())
  np.testing.assert_array_equal(got["b"], tensors["b"].numpy())
  np.testing.assert_array_equal(got["i"], np.arange(4))


def test_written_bfloat16_loads_in_torch(tmp_path):
  w = np.random.default_rng(0).normal(size=(4, 6)).astype(ml_dtypes.bfloat16)
  path = str(tmp_path / "model.safetensors")
  safetensors_io.write_file(path, {"w": w})
  loaded = safetensors_torch.load_file(path)["w"]
  assert loaded.dtype == torch.bfloat16
  np.testing.assert_array_equal(loaded.float().numpy(), w.astype(np.float32))


def test_pickles_are_refused(tmp_path):
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(UserError, match="pickle checkpoints"):
    safetensors_io.read_dir(str(tmp_path))
