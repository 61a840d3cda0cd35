"""lm-quantize: a model directory -> a quantized one that lm.load, lm-sample and lm-eval run.

  lm-quantize --model_dir M --out_dir Q --scheme int8|int4 [--group_size 128]
      [--skip embed,unembed] [--method rtn|gptq --calibration_task ppl:FILES|seqio:TASK
      [--calibration_rows 64] [--calibration_len 256]] [--step N] [--overwrite]
"""
import argparse
import sys

from lm.cli.common import add_calibration_flags, run_main


def _main(argv):
  parser = argparse.ArgumentParser(prog="lm-quantize", description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", required=True, help="an lm run or import (float weights)")
  parser.add_argument("--out_dir", required=True, help="the quantized model directory to write")
  parser.add_argument("--scheme", required=True, choices=("int8", "int4"),
                      help="int8: per output channel; int4: groups of --group_size input rows")
  parser.add_argument("--group_size", type=int, default=128, help="int4 rows per scale")
  parser.add_argument("--skip", default="",
                      help="comma-separated path components left in float, e.g. embed,unembed")
  parser.add_argument("--method", default="rtn", choices=("rtn", "gptq"),
                      help="rtn: round to nearest; gptq: error-compensating, needs calibration")
  add_calibration_flags(parser, "GPTQ")
  parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out_dir")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)

  from lm.compression import quantize  # after parsing: --help stays fast
  out = quantize.quantize_dir(args.model_dir, args.out_dir, args.scheme, args.group_size,
                              args.skip.split(","), args.step, args.overwrite, args.method,
                              args.calibration_task, args.calibration_rows,
                              args.calibration_len)
  print(f"quantized {len(out['quantized'])} matrices ({args.scheme}, {args.method}) -> "
        f"{args.out_dir}: "
        f"{out['float_bytes']:,} -> {out['quantized_bytes']:,} parameter bytes "
        f"({out['quantized_bytes'] / out['float_bytes']:.3f}x)")


def main(argv=None):
  raise SystemExit(run_main(_main, argv))


if __name__ == "__main__":
  main()
