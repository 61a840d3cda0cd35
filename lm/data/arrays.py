"""TensorFlow-free inputs: batches from exported .npy arrays, or synthetic tokens.

GPU/TPU images without TensorFlow train from a task exported once on a machine that has it
(`python -m lm.data.export`), reading the arrays with numpy (memory-mapped). Synthetic batches
measure pure step throughput.
"""
import dataclasses
import os

import gin
import jax
import numpy as np

from lm.errors import UserError


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ArrayInputConfig:
  """Batches of rows from DIR/<split>/<feature>.npy, reshuffled each epoch by `seed`.

  task names what the rows were exported from (its vocabulary decodes samples).
  """
  path: str = ""
  batch_size: int = 12
  seq_len: int = 64
  seed: int = 0
  task: str | None = None


class ArrayBatches:
  """Global batch b holds rows perm_e[b*B:(b+1)*B] of epoch e; each process takes its slice."""

  def __init__(self, cfg: ArrayInputConfig, split: str, start: int = 0):
    directory = os.path.join(cfg.path, split)
    if not os.path.isdir(directory):
      raise UserError(f"no exported split {split!r} under {cfg.path!r}")
    self.arrays = {f[:-4]: np.load(os.path.join(directory, f), mmap_mode="r")
                   for f in sorted(os.listdir(directory)) if f.endswith(".npy")}
    rows, length = self.arrays["targets"].shape
    if length != cfg.seq_len:
      raise UserError(f"{directory} holds sequences of {length} tokens, SEQ_LEN={cfg.seq_len}")
    self.batches_per_epoch = rows // cfg.batch_size
    if self.batches_per_epoch == 0:
      raise UserError(f"{directory} has {rows} rows, fewer than BATCH_SIZE={cfg.batch_size}")
    per_process = cfg.batch_size // jax.process_count()
    self._rows = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    self.cfg, self.state = cfg, start
    self.vocab_size = None  # unknown: the exported arrays do not record their vocabulary

  def restore(self, batches: int):
    self.state = batches

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    epoch, index = divmod(self.state, self.batches_per_epoch)
    perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.arrays["targets"]))
    rows = np.sort(perm[index * self.cfg.batch_size:(index + 1) * self.cfg.batch_size][self._rows])
    self.state += 1
    return {k: np.asarray(v[rows]) for k, v in self.arrays.items()}


@gin.configurable
def array_batches(cfg: ArrayInputConfig, split: str, start: int = 0) -> ArrayBatches:
  """batches_fn for exported arrays (same contract as lm.data.pipeline.make_batches)."""
  return ArrayBatches(cfg, split, start)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SyntheticInputConfig:
  """Uniform random tokens: for throughput runs only (the loss means nothing)."""
  vocab_size: int = 256
  batch_size: int = 12
  seq_len: int = 64
  seed: int = 0
  task: str | None = None


class SyntheticBatches:
  def __init__(self, cfg: SyntheticInputConfig, split: str, start: int = 0):
    self.cfg, self.state = cfg, start
    self._offset = 0 if split == "train" else 1 << 20
    self.vocab_size = cfg.vocab_size

  def restore(self, batches: int):
    self.state = batches

  def __iter__(self):
    return self

  def __next__(self):
    cfg = self.cfg
    rows = cfg.batch_size // jax.process_count()
    rng = np.random.default_rng([cfg.seed, self._offset + self.state, jax.process_index()])
    tokens = rng.integers(0, cfg.vocab_size, (rows, cfg.seq_len + 1), dtype=np.int32)
    self.state += 1
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "weights": np.ones((rows, cfg.seq_len), np.int32)}


@gin.configurable
def synthetic_batches(cfg: SyntheticInputConfig, split: str, start: int = 0):
  return SyntheticBatches(cfg, split, start)
