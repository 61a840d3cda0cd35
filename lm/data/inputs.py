"""Input configuration for SeqIO tasks, importable without TensorFlow.

Gin configs bind `InputConfig` and `make_batches` on any image; only reading a SeqIO task
imports lm.data.pipeline (TensorFlow). TF-less images bind lm.data.arrays inputs instead.
"""
import dataclasses

import gin
import jax

from lm.errors import UserError


@gin.configurable
@dataclasses.dataclass(frozen=True)
class InputConfig:
  """Which task to read and how to batch it.

  continuous: for corpus tasks (random windows of running text). Reads seq_len + 1 tokens and
    drops the first position, so every target is predicted from real context instead of BOS
    (nanoGPT's x = w[:-1], y = w[1:]).
  shuffle_buffer_size: examples (document pieces of up to seq_len tokens) shuffled after the
    per-epoch file shuffle and the interleaving of 16 files. SeqIO's default, 1,000, mixes
    only a few hundred documents, so batches follow file order (lm-prep writes shards in
    input order); 10,000 mixes ten times more at a cost of about 10,000 * seq_len * 4 bytes
    per shard in memory and in every checkpoint (the saved reader state holds the buffer).
    Corpus tasks ignore it (their windows are independent draws).
  """
  task: str = "tiny_shakespeare_char"
  batch_size: int = 12
  seq_len: int = 64
  pack: bool = True
  continuous: bool = False
  seed: int = 0
  num_shards: int | None = None  # None: one per process
  shuffle_buffer_size: int = 10_000

  def shards(self) -> int:
    return self.num_shards or jax.process_count()


@gin.configurable
def make_batches(cfg: InputConfig, split: str, start: int = 0, *, eval_seed: int = 1234):
  """Training batches (endless, shuffled, seeded by cfg.seed), or evaluation batches: a fixed
  sample of `split` read once, shuffled by `eval_seed`, that ends with the split (see
  lm.data.pipeline)."""
  try:
    from lm.data.pipeline import SeqioBatches
  except ImportError as e:
    raise UserError(f"SeqIO inputs need TensorFlow and seqio ({e}); on a TF-less image export "
                    "the task with `python -m lm.data.export` and bind lm.data.arrays inputs")
  if split == "train":
    return SeqioBatches(cfg, split, shuffle=True, seed=cfg.seed, start=start)
  return SeqioBatches(cfg, split, shuffle=True, seed=eval_seed, start=start, num_epochs=1)
