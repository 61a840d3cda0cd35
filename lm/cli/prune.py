"""lm-prune: a model directory -> a pruned one (exact zeros) that lm-train can recover.

  lm-prune --model_dir M --out_dir P --sparsity 0.5 --pattern unstructured|2:4
      [--method magnitude|wanda] [--calibration_task ppl:FILES | seqio:TASK[:SPLIT]]
      [--calibration_rows 64] [--calibration_len 256] [--step N] [--overwrite]

Recover with lm-train ... --gin.train.init_from="'P'": the pruned weights stay zero.
"""
import argparse
import sys

from lm.cli.common import add_calibration_flags, run_main


def _main(argv):
  parser = argparse.ArgumentParser(prog="lm-prune", description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", required=True, help="an lm run or import (float weights)")
  parser.add_argument("--out_dir", required=True, help="the pruned model directory to write")
  parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of zeros per kernel")
  parser.add_argument("--pattern", default="unstructured", choices=("unstructured", "2:4"))
  parser.add_argument("--method", default="magnitude", choices=("magnitude", "wanda"))
  add_calibration_flags(parser, "Wanda")
  parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out_dir")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)

  from lm.compression import prune  # after parsing: --help stays fast
  sparsities = prune.prune_dir(args.model_dir, args.out_dir, args.sparsity, args.pattern,
                               args.method, args.calibration_task, args.calibration_rows,
                               args.calibration_len, args.step, args.overwrite)
  mean = sum(sparsities.values()) / max(len(sparsities), 1)
  print(f"pruned {len(sparsities)} kernels ({args.method}, {args.pattern}, mean sparsity "
        f"{mean:.4f}) -> {args.out_dir}")


def main(argv=None):
  raise SystemExit(run_main(_main, argv))


if __name__ == "__main__":
  main()
