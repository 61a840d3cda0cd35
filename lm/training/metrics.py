"""Metric writers (JSONL, TensorBoard, optional Weights & Biases) and MFU."""
import json
import os

import jax

# Dense (no 2:4 sparsity) bf16 peak FLOP/s per device, keyed by jax's `device_kind`. NVIDIA's
# datasheets print the sparse figure; dense is half of it. A jax device is one chip on all of
# these (TPU v4 and v5p: one megacore device per chip).
PEAK_FLOPS = {
    # GPUs: the kind starts with the CUDA device name, e.g. 'NVIDIA H100 80GB HBM3' (SXM5),
    # 'NVIDIA A100-SXM4-80GB', 'NVIDIA A100 80GB PCIe'; the longest matching key wins.
    "NVIDIA H100": 989e12,  # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: 1,979 sparse
    "NVIDIA H100 PCIe": 756e12,  # same datasheet, H100 PCIe: 1,513 sparse
    "NVIDIA H100 NVL": 835e12,  # same datasheet, H100 NVL: 1,671 sparse
    "NVIDIA H200": 989e12,  # NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: 1,979 sparse
    "NVIDIA H200 NVL": 835e12,  # same datasheet, H200 NVL: 1,671 sparse
    "NVIDIA A100": 312e12,  # NVIDIA A100 Tensor Core GPU datasheet (SXM and PCIe): 624 sparse
    "NVIDIA L4": 121e12,  # NVIDIA L4 Tensor Core GPU datasheet: 242 sparse
    # TPUs: exact kinds (Cloud TPU documentation, "TPU versions": bf16 peak per chip). jax
    # spells v5e 'TPU v5 lite', v5p 'TPU v5' and v6e (Trillium) 'TPU v6 lite'.
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def peak_flops_of(device_kind: str) -> float | None:
  """PEAK_FLOPS for a jax `device_kind`: TPU kinds exactly ('TPU v4 lite' is not a v4), NVIDIA
  kinds by their longest key prefix; None where unknown (CPUs, GPUs not in the table)."""
  if device_kind.startswith("TPU"):
    return PEAK_FLOPS.get(device_kind)
  keys = [k for k in PEAK_FLOPS if k.startswith("NVIDIA") and device_kind.startswith(k)]
  return PEAK_FLOPS[max(keys, key=len)] if keys else None


def peak_flops_per_device(override: float | None = None) -> float | None:
  """The device's peak FLOP/s, or None where unknown (e.g. CPUs): then no MFU is reported."""
  if override:
    return override
  return peak_flops_of(jax.devices()[0].device_kind)


def throughput_scalars(window_steps: int, elapsed_s: float, tokens_per_step: float,
                       flops_per_step: float, peak_per_device: float | None,
                       n_devices: int) -> dict[str, float]:
  """Throughput of `window_steps` steps that took `elapsed_s` seconds, as logged scalars.

  tokens_per_step and flops_per_step are the whole (global) batch's: tokens the model is fed,
  and model FLOPs (lm.models.config.flops_per_token times tokens). Returns
  train/tokens_per_sec (the whole run's, all devices), train/step_time_ms,
  train/gflops_per_sec (achieved model FLOP/s of the whole run divided by n_devices, in
  GFLOP/s: per device, reported everywhere, CPUs included) and, only where the device's peak
  FLOP/s is known, train/mfu (that per-device figure over the peak, a fraction).
  """
  flops_per_device = window_steps * flops_per_step / elapsed_s / n_devices
  scalars = {"train/tokens_per_sec": window_steps * tokens_per_step / elapsed_s,
             "train/step_time_ms": 1000 * elapsed_s / window_steps,
             "train/gflops_per_sec": flops_per_device / 1e9}
  if peak_per_device:
    scalars["train/mfu"] = flops_per_device / peak_per_device
  return scalars


class MetricsWriter:
  """Writes each step's scalars to MODEL_DIR/metrics.jsonl, TensorBoard and (optionally) W&B.

  resume_step: the step a resumed run restored; what the interrupted run logged past it (about
  to be logged again) is dropped: metrics.jsonl's lines, and TensorBoard's points (a session
  start at resume_step + 1, which TensorBoard reads as a restart: it hides the earlier events at
  or past that step once a second start is seen, so every run writes one). W&B cannot rewind a
  run: it ignores steps at or below the last one it holds (with a warning each), keeping the
  interrupted run's values there, the same values when the resume is exact.
  run_id: the W&B run id, the same for every resume of one run.
  """

  def __init__(self, model_dir: str, wandb_project: str | None = None, config: str = "",
               run_id: str | None = None, resume_step: int = 0):
    self._enabled = jax.process_index() == 0
    if not self._enabled:
      return
    path = os.path.join(model_dir, "metrics.jsonl")
    _drop_lines_after(path, resume_step)
    self._jsonl = open(path, "a", encoding="utf-8")
    from tensorboardX import SummaryWriter  # imported here: only process 0 writes
    self._tb = SummaryWriter(os.path.join(model_dir, "tensorboard"), purge_step=resume_step + 1)
    self._wandb = None
    if wandb_project:
      import wandb
      self._wandb = wandb.init(project=wandb_project, dir=model_dir, resume="allow",
                               id=run_id,
                               config={"gin": config})

  def write(self, step: int, scalars: dict[str, float]):
    if not self._enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    if self._wandb:
      self._wandb.log(scalars, step=step)

  def close(self):
    if self._enabled:
      self._jsonl.close()
      self._tb.close()
      if self._wandb:
        self._wandb.finish()


def _drop_lines_after(path: str, step: int):
  """Keeps the lines of a metrics.jsonl up to `step` (and drops a line a crash cut short)."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line.rstrip("\n") + "\n")
      except (ValueError, KeyError):
        continue
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(tmp, path)
