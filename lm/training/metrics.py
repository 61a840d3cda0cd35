"""Metric writers (JSONL, TensorBoard, optional Weights & Biases) and MFU."""
import json
import os

import jax

# Dense bf16 peak FLOP/s per device, by jax device_kind prefix (vendor datasheets).
PEAK_FLOPS = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
    "NVIDIA A10G": 125e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def peak_flops_per_device(override: float | None = None) -> float | None:
  """The device's peak FLOP/s, or None where unknown (e.g. CPUs): then no MFU is reported."""
  if override:
    return override
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)


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
