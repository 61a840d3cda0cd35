"""lm-eval: benchmarks and perplexity for a model directory (an lm-train run or an import).

  lm-eval --model_dir=/tmp/lm/run --tasks=arc_easy,piqa,lambada_openai --data_dir=../shared/evaldata
  lm-eval --model_dir=DIR --tasks=ppl:/data/val.jsonl,seqio:tiny_shakespeare_char --seq_len=256

Prints a table (task, metric, value, stderr) and adds the run to MODEL_DIR/eval/step_<N>.json:
every score, its standard error, the config and the first rendered prompts with the model's
answers, per task; a task evaluated again replaces that task's entries, the step's other tasks
are kept (each task's run config is under task_config).
Imports no TensorFlow except for `seqio:` tasks. Compiled programs are kept in JAX's
persistent compilation cache under $LM_CACHE_DIR/jax (default ~/.cache/lm/jax), so a second
run of the same model shape skips most compilation (--no_compilation_cache: off).
"""
import argparse
import contextlib
import fcntl
import json
import os
import sys
import tempfile

from lm.cli.common import run_main, use_compilation_cache
from lm.errors import UserError


def _parser():
  parser = argparse.ArgumentParser(prog="lm-eval", description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  parser.add_argument("--tasks", required=True, help="comma-separated task names")
  parser.add_argument("--num_fewshot", type=int, default=0)
  parser.add_argument("--limit", type=int, help="evaluate the first N documents of each task")
  parser.add_argument("--batch_size", type=int, default=16,
                      help="work per forward pass (multiple choice: about B x 128 tokens of packed "
                           "rows)")
  parser.add_argument("--seed", type=int, default=1234, help="few-shot example draws")
  parser.add_argument("--fewshot_sampling", choices=("harness", "per_document"),
                      default="harness", help="harness: lm-evaluation-harness's draws "
                      "(same few-shot prompts); per_document: keyed by document index")
  parser.add_argument("--data_dir", help="benchmark files (default: $LM_EVAL_DATA_DIR)")
  parser.add_argument("--seq_len", type=int, help="perplexity window (default: max_len)")
  parser.add_argument("--stride", type=int, help="perplexity stride (default: seq_len)")
  parser.add_argument("--mesh_shape", type=lambda s: tuple(int(x) for x in s.split(",")),
                      help="data,fsdp,tensor (default: one device)")
  parser.add_argument("--no_compilation_cache", action="store_true",
                      help="do not read or write the persistent compilation cache")
  return parser


REPORT_SECTIONS = ("results", "stderr", "num_examples", "seconds", "examples", "task_config")


def _read_report(path: str) -> dict:
  """The step's report written by earlier runs ({} if none); a file that is not one is a
  UserError (checked before evaluating too, so that a long run is not lost at the end)."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      report = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: cannot read the step's report ({e}); move it away") from None
  if not isinstance(report, dict) or not all(isinstance(report.get(k, {}), dict)
                                             for k in REPORT_SECTIONS):
    raise UserError(f"{path} is not an lm-eval report; move it away")
  return report


def merge_report(old: dict, new: dict) -> dict:
  """`old` (a step's file) updated with the run `new` (lm.evaluate's dict): each of new's
  tasks replaces that task's entries, other tasks are kept; `config` is the latest run's and
  task_config[task] the run config that produced each task's numbers."""
  merged = {k: dict(old.get(k, {})) for k in REPORT_SECTIONS}
  run_config = {k: v for k, v in new["config"].items() if k != "tasks"}
  for task in new["results"]:
    for k in REPORT_SECTIONS[:-1]:
      merged[k][task] = new[k][task]
    merged["task_config"][task] = run_config
  merged["config"] = new["config"]
  return merged


@contextlib.contextmanager
def _locked(directory: str):
  """An exclusive flock on `directory`: concurrent lm-eval runs merge one after another."""
  fd = os.open(directory, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # closing drops the lock


def _write_report(path: str, report: dict):
  """Merges `report` into the step's file (see merge_report), atomically: readers and a crash
  see the old file or the new one, never half of one."""
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  with _locked(directory):
    merged = merge_report(_read_report(path), report)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(merged, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
      os.chmod(tmp, 0o666 & ~_umask())
      os.replace(tmp, path)
    except BaseException:
      os.unlink(tmp)
      raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _main(argv):
  args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
  if not os.path.exists(os.path.join(args.model_dir, "model.json")):
    raise UserError(f"{args.model_dir} is not an lm model directory (no model.json)")
  tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
  if args.data_dir is not None and not os.path.isdir(args.data_dir):
    raise UserError(f"--data_dir {args.data_dir} is not a directory")
  from lm.evaluation import get_task  # after the cheap checks: JAX takes seconds to load
  from lm.evaluation.runner import check_options, evaluate, format_table
  options = dict(num_fewshot=args.num_fewshot, limit=args.limit, batch_size=args.batch_size,
                 seq_len=args.seq_len, stride=args.stride,
                 fewshot_sampling=args.fewshot_sampling)
  check_options(tasks, **options)
  for name in tasks:
    get_task(name)
  from lm.model_dir import CHECKPOINTS, absolute, latest_step
  step = args.step
  if step is None:
    step = latest_step(os.path.join(absolute(args.model_dir), CHECKPOINTS))
  path = os.path.join(args.model_dir, "eval", f"step_{step}.json")
  _read_report(path)
  if not args.no_compilation_cache:
    use_compilation_cache()
  import lm
  model = lm.load(args.model_dir, step, args.mesh_shape)
  report = evaluate(model, tasks, seed=args.seed, data_dir=args.data_dir,
                    config={"model_dir": os.path.abspath(args.model_dir), "step": step,
                            "mesh_shape": args.mesh_shape}, **options)
  print(format_table(report))
  _write_report(path, report)
  print(f"wrote {path}")


def main(argv=None):
  sys.exit(run_main(_main, argv))


if __name__ == "__main__":
  main()
