"""Export a SeqIO task's batches to .npy arrays that lm.data.arrays reads without TensorFlow.

  python -m lm.data.export --task=tiny_shakespeare_char --out_dir=/data/shakespeare_np \
      --seq_len=256 --continuous --train_examples=320000 --validation_examples=12800
"""
import argparse
import itertools
import os
import shutil

import numpy as np

from lm.data.inputs import InputConfig, make_batches


def export_split(cfg: InputConfig, split: str, num_examples: int, out_dir: str) -> int:
  """Writes out_dir/<split>/<feature>.npy with `num_examples` rows (rounded down to batches)."""
  # validation batches end with the split: a small one exports fewer rows
  parts = list(itertools.islice(make_batches(cfg, split), num_examples // cfg.batch_size))
  tmp = os.path.join(out_dir, f".{split}.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  for name in parts[0]:
    np.save(os.path.join(tmp, f"{name}.npy"), np.concatenate([p[name] for p in parts]))
  final = os.path.join(out_dir, split)
  shutil.rmtree(final, ignore_errors=True)
  os.replace(tmp, final)  # readers never see a half-written split
  return len(parts) * cfg.batch_size


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--task", required=True)
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--seq_len", type=int, required=True)
  parser.add_argument("--continuous", action="store_true", help="random windows of running text")
  parser.add_argument("--no_pack", action="store_true")
  parser.add_argument("--train_examples", type=int, default=100_000)
  parser.add_argument("--validation_examples", type=int, default=10_000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  cfg = InputConfig(task=args.task, batch_size=64, seq_len=args.seq_len, pack=not args.no_pack,
                    continuous=args.continuous, seed=args.seed, num_shards=1)
  for split, n in (("train", args.train_examples), ("validation", args.validation_examples)):
    print(f"{split}: {export_split(cfg, split, n, args.out_dir)} rows")


if __name__ == "__main__":
  main()
