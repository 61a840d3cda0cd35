"""Throughput scalars (tokens/s, step time, achieved GFLOP/s per device, MFU) and the peak table."""
import pytest

from lm.training.metrics import peak_flops_of, throughput_scalars


def test_throughput_scalars_by_hand():
  # 10 steps in 2 s, 4,096 tokens and 8 TFLOP per step over 4 devices of 989 TFLOP/s peak.
  out = throughput_scalars(window_steps=10, elapsed_s=2.0, tokens_per_step=4096,
                           flops_per_step=8e12, peak_per_device=989e12, n_devices=4)
  assert out.keys() == {"train/tokens_per_sec", "train/step_time_ms", "train/gflops_per_sec",
                        "train/mfu"}
  assert out["train/tokens_per_sec"] == pytest.approx(40960 / 2)  # all devices together
  assert out["train/step_time_ms"] == pytest.approx(200.0)
  # 80 TFLOP in 2 s = 40 TFLOP/s for the run, 10 TFLOP/s = 10,000 GFLOP/s per device.
  assert out["train/gflops_per_sec"] == pytest.approx(10_000.0)
  assert out["train/mfu"] == pytest.approx(10e12 / 989e12)


def test_no_peak_no_mfu():
  # A CPU: achieved GFLOP/s only, never an MFU against a made-up peak.
  out = throughput_scalars(window_steps=3, elapsed_s=1.5, tokens_per_step=768,
                           flops_per_step=3.7e9, peak_per_device=None, n_devices=2)
  assert out == pytest.approx({"train/tokens_per_sec": 1536.0, "train/step_time_ms": 500.0,
                               "train/gflops_per_sec": 3 * 3.7 / 1.5 / 2})


@pytest.mark.parametrize("kind, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),  # SXM5
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA H200 NVL", 835e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5", 459e12),  # v5p
    ("TPU v6 lite", 918e12),  # v6e
    ("TPU v4 lite", None),  # v4i: not a v4
    ("cpu", None),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_peak_by_device_kind(kind, peak):
  assert peak_flops_of(kind) == peak
