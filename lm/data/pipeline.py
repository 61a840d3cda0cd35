"""seqio.get_dataset -> numpy batches of this process's rows, resumable by batch count.

The global batch is made of `num_shards` SeqIO shards (`seqio.ShardInfo`), each contributing
batch_size / num_shards rows; a process reads the shards that belong to it. So the batches a
run sees depend on the seed and the shard count, never on how many processes read them.
"""
from typing import Iterator

import jax
import numpy as np
import seqio
import tensorflow as tf

from lm.data import tasks  # noqa: F401  (registers the built-in tasks)
from lm.data.inputs import InputConfig
from lm.errors import UserError

# seqio's decoder features -> the names lm's train step uses.
_RENAME = {
    "decoder_input_tokens": "inputs",
    "decoder_target_tokens": "targets",
    "decoder_loss_weights": "weights",
    "decoder_segment_ids": "segment_ids",
    "decoder_positions": "positions",
}


class SeqioBatches:
  """An iterator over numpy batches of this process's rows; `state` counts batches read."""

  def __init__(self, cfg: InputConfig, split: str, shuffle: bool, seed: int, start: int = 0):
    self.cfg, self.split, self.shuffle, self.seed = cfg, split, shuffle, seed
    n, p = cfg.shards(), jax.process_count()
    if n % p or cfg.batch_size % n:
      raise UserError(f"{n} data shards must split evenly over {p} processes and divide "
                      f"BATCH_SIZE={cfg.batch_size}")
    if cfg.task not in seqio.TaskRegistry.names() | seqio.MixtureRegistry.names():
      raise UserError(f"unknown task {cfg.task!r}; registered: "
                      f"{sorted(seqio.TaskRegistry.names())}")
    per_process = n // p
    self._shards = range(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    self.restore(start)

  def _dataset(self, shard: int) -> tf.data.Dataset:
    cfg = self.cfg
    length = cfg.seq_len + 1 if cfg.continuous else cfg.seq_len
    ds = seqio.get_dataset(
        cfg.task, task_feature_lengths={"targets": length}, dataset_split=self.split,
        shuffle=self.shuffle, num_epochs=None, seed=self.seed,
        shard_info=seqio.ShardInfo(index=shard, num_shards=self.cfg.shards()),
        feature_converter=seqio.DecoderFeatureConverter(pack=cfg.pack and not cfg.continuous))
    return ds.batch(cfg.batch_size // cfg.shards(), drop_remainder=True)

  def restore(self, batches: int):
    """Positions the iterator after `batches` batches (re-reads and skips them)."""
    self.state = batches
    self._iters = [iter(self._dataset(s).skip(batches).prefetch(2).as_numpy_iterator())
                   for s in self._shards]

  @property
  def vocab_size(self) -> int:
    """Size of the task's vocabulary: every token id is below it."""
    return vocabulary(self.cfg.task).vocab_size

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(it) for it in self._iters]
    self.state += 1
    batch = {_RENAME[k]: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if self.cfg.continuous:
      batch = {k: v[:, 1:] for k, v in batch.items()}
    return batch


def vocabulary(task: str) -> seqio.Vocabulary:
  """The "targets" vocabulary of a registered task or mixture, e.g. to decode samples."""
  return seqio.get_mixture_or_task(task).output_features["targets"].vocabulary
