"""SeqIO tasks -> numpy batches of this process's rows, resumable in O(1) of the step.

Training batches: the global batch is made of `num_shards` SeqIO shards (`seqio.ShardInfo`),
each contributing batch_size / num_shards rows; a process reads the shards that belong to it,
so the batches a run sees depend on the seed and the shard count, never on how many processes
read them. Files are shuffled anew every epoch and examples through a buffer of
`InputConfig.shuffle_buffer_size`. `state` (JSON) is where the reader is:
- corpus tasks (random windows): the batch count; window i of a shard is computed from
  (seed, shard, i), so restoring starts every shard's stream at its next window directly;
- other tasks: also each shard's tf.data iterator checkpoint (lm.data.resume), restored
  without re-reading what was consumed.

Evaluation batches (`num_epochs=1`): a fixed sample, the split read once in an order shuffled
by a fixed seed, never repeated. Every process reads the same unsharded stream and keeps its
rows, so all processes see the same number of batches; the last partial batch is padded with
zero-weight rows, and the iterator ends with the split (an empty split is a UserError).
"""
from typing import Iterator

import jax
import numpy as np
import seqio
import tensorflow as tf

from lm.data import tasks  # noqa: F401  (registers the built-in tasks)
from lm.data.instruct import feature_converter
from lm.data.mixtures import member_eval_batches
from lm.data.resume import gather_processes, restore_iterator, save_iterator
from lm.data.sources import RandomWindowsSource
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
  """An iterator over numpy batches of this process's rows; see the module docstring.

  cfg: an lm.data.inputs.InputConfig (not imported: lm.data.inputs imports this module, which
    needs TensorFlow, only when a SeqIO task is read).
  num_epochs: None repeats the split forever (training); 1 reads it once (evaluation).
  """

  def __init__(self, cfg, split: str, shuffle: bool, seed: int, start=0,
               num_epochs: int | None = None):
    self.cfg, self.split, self.shuffle, self.seed = cfg, split, shuffle, seed
    self.num_epochs = num_epochs
    if cfg.task not in seqio.TaskRegistry.names() | seqio.MixtureRegistry.names():
      raise UserError(f"unknown task {cfg.task!r}; registered: "
                      f"{sorted(seqio.TaskRegistry.names())}")
    self._task = seqio.get_mixture_or_task(cfg.task)
    p = jax.process_count()
    if num_epochs is None:
      n = cfg.shards()
      if n % p or cfg.batch_size % n:
        raise UserError(f"{n} data shards must split evenly over {p} processes and divide "
                        f"BATCH_SIZE={cfg.batch_size}")
      self._num_shards, self._rows = n, cfg.batch_size // n
      self._shards = range(jax.process_index() * (n // p), (jax.process_index() + 1) * (n // p))
    else:
      if cfg.batch_size % p:
        raise UserError(f"BATCH_SIZE={cfg.batch_size} must split evenly over {p} processes")
      self._num_shards, self._rows, self._shards = 1, cfg.batch_size, range(1)
    self.restore(start)
    if num_epochs is not None:
      self._peeked = self._read()  # an empty split fails here, not at the first eval

  @property
  def _addressable(self) -> bool:
    """Whether batch b's examples are computable from b (corpus tasks: random windows)."""
    return isinstance(self._task, seqio.Task) and isinstance(self._task.source,
                                                             RandomWindowsSource)

  def _dataset(self, shard: int, start_batch: int = 0) -> tf.data.Dataset:
    cfg, task = self.cfg, self._task
    if start_batch and self._addressable:  # the same task, its windows starting later
      task = seqio.Task(task.name, task.source.starting_at(start_batch * self._rows),
                        task.output_features, task.preprocessors, shuffle_buffer_size=None)
    convert, length = feature_converter(task, cfg.seq_len, pack=cfg.pack and not cfg.continuous,
                                        continuous=cfg.continuous)
    buffer = {"shuffle_buffer_size": cfg.shuffle_buffer_size} if isinstance(task, seqio.Task) else {}
    ds = task.get_dataset(length, split=self.split, shuffle=self.shuffle, seed=self.seed,
                          shard_info=seqio.ShardInfo(index=shard, num_shards=self._num_shards),
                          num_epochs=self.num_epochs, **buffer)
    ds = convert(ds)  # instruction tasks bring their own loss weights
    ds = ds.batch(self._rows, drop_remainder=self.num_epochs is None)
    return ds.prefetch(2)

  def restore(self, state):
    """Positions the reader after the batches `state` (a `.state`, or a batch count) counts.

    A bare count for a non-corpus task (a checkpoint without iterator states) re-reads and
    skips the batches it counts.
    """
    state = state if isinstance(state, dict) else {"batches": state}
    self.batches, self._peeked = state["batches"], None
    saved = state.get("iterators")
    if self._addressable:
      self._iters = [iter(self._dataset(s, self.batches)) for s in self._shards]
    elif saved:
      self._iters = [iter(self._dataset(s)) for s in self._shards]
      for shard, it in zip(self._shards, self._iters):
        restore_iterator(it, saved[str(shard)])
    else:
      self._iters = [iter(self._dataset(s).skip(self.batches)) for s in self._shards]

  @property
  def state(self) -> dict:
    """JSON: {"batches": n} and, for non-corpus tasks, every shard's iterator checkpoint."""
    if self._addressable:
      return {"batches": self.batches}
    local = {str(shard): save_iterator(it) for shard, it in zip(self._shards, self._iters)}
    return {"batches": self.batches, "iterators": gather_processes(local)}

  @property
  def vocab_size(self) -> int:
    """Size of the task's vocabulary: every token id is below it."""
    return vocabulary(self.cfg.task).vocab_size

  def eval_sets(self, eval_steps: int, batches_fn) -> dict[str, list]:
    """A mixture's members' validation batches by task (the loop logs eval/<task>/loss), read
    by batches_fn, the function that reads the mixture's own (lm.data.mixtures)."""
    return member_eval_batches(self.cfg, eval_steps, batches_fn)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def _read(self) -> dict[str, np.ndarray]:
    try:
      parts = [{k: v.numpy() for k, v in next(it).items()} for it in self._iters]
    except StopIteration:
      if self.batches == 0:
        raise UserError(f"split {self.split!r} of task {self.cfg.task!r} has no data") from None
      raise
    batch = {_RENAME[k]: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if self.num_epochs is not None:  # evaluation: pad to the full batch, keep this process's rows
      rows, per_process = self.cfg.batch_size, self.cfg.batch_size // jax.process_count()
      batch = {k: np.pad(v, [(0, rows - len(v))] + [(0, 0)] * (v.ndim - 1))
               for k, v in batch.items()}
      mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
      batch = {k: v[mine] for k, v in batch.items()}
    return batch

  def __next__(self) -> dict[str, np.ndarray]:
    batch, self._peeked = self._peeked or self._read(), None
    self.batches += 1
    return batch


def vocabulary(task: str) -> seqio.Vocabulary:
  """The "targets" vocabulary of a registered task or mixture, e.g. to decode samples."""
  return seqio.get_mixture_or_task(task).output_features["targets"].vocabulary
