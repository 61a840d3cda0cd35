"""lm-sweep: run a grid of lm-train runs and compare them.

  lm-sweep --gin_file=BASE.gin --grid 'ModelConfig.positions=["learned","rope","alibi"]' \
      --grid 'SEED=[0,1,2]' --out_dir=D [--parallel N] [--zip] [--gin.X=value ...]
  lm-sweep --report D

Runs the product of the grids (`--zip`: their zip), one run directory per point under D,
`--parallel` at a time; re-running skips finished runs and resumes the others. Writes
D/results.csv, D/results.md and D/curves.png; `--report D` rebuilds them from the run
directories. Exit status: the number of failed runs (at most 100); 2 with an `error:` line
for a bad command line; 130 after Ctrl-C / SIGTERM, which each running run gets once (it saves
at its current step and stops; a second Ctrl-C aborts the runs).
"""
import argparse
import os
import sys

from lm.cli.common import parse_args, run_main
from lm.errors import UserError


def _main(argv):
  parser = argparse.ArgumentParser(prog="lm-sweep", description=__doc__.split("\n")[0])
  parser.add_argument("--gin_file", action="append", default=[], help="base gin config (repeatable)")
  parser.add_argument("--grid", action="append", default=[],
                      help="NAME=[v1,v2,...]: a binding and its values (repeatable)")
  parser.add_argument("--zip", action="store_true", help="zip the grids instead of their product")
  parser.add_argument("--out_dir", help="the sweep directory (one run directory per point)")
  parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
  parser.add_argument("--wandb_group", help="W&B group of the runs (default: the out_dir's name)")
  parser.add_argument("--report", metavar="DIR", help="only rebuild DIR's results from its runs")
  args, bindings = parse_args(parser, argv)
  from lm import sweep
  if args.report:
    if args.grid or args.gin_file or args.out_dir or bindings:
      raise UserError("--report DIR takes no other flags")
    rows = sweep.write_report(args.report)
    with open(os.path.join(args.report, "results.md")) as f:
      print(f.read(), end="")
    return min(sum(r["status"] == "failed" for r in rows), sweep.MAX_EXIT_STATUS)
  if not args.out_dir:
    raise UserError("give --out_dir (or --report DIR)")
  gin_flags = [f"--gin.{b.replace(' = ', '=', 1)}" for b in bindings]
  runs = sweep.prepare(args.gin_file, args.grid, args.out_dir, args.zip, gin_flags)
  spec = {"argv": list(sys.argv[1:] if argv is None else argv), "runs": len(runs)}
  return sweep.run_sweep(runs, args.out_dir, args.parallel, spec=spec,
                         wandb_group=args.wandb_group)


def main(argv=None):
  failed = []
  try:
    code = run_main(lambda a: failed.append(_main(a)), argv)
  except KeyboardInterrupt:  # the runs were stopped and recorded as unfinished
    code = 130
  raise SystemExit(code or failed[0])


if __name__ == "__main__":
  main()
