"""lm-eval: benchmarks and perplexity for a model directory (an lm-train run or an import).

  lm-eval --model_dir=/tmp/lm/run --tasks=arc_easy,piqa,lambada_openai --data_dir=../shared/evaldata
  lm-eval --model_dir=DIR --tasks=ppl:/data/val.jsonl,seqio:tiny_shakespeare_char --seq_len=256

Prints a table (task, metric, value, stderr) and writes MODEL_DIR/eval/step_<N>.json: every
score, its standard error, the config and the first rendered prompts with the model's answers.
Imports no TensorFlow except for `seqio:` tasks. Compiled programs are kept in JAX's
persistent compilation cache under $LM_CACHE_DIR/jax (default ~/.cache/lm/jax), so a second
run of the same model shape skips most compilation (--no_compilation_cache: off).
"""
import argparse
import json
import os
import sys

from lm.cli.common import run_main
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


def _use_compilation_cache():
  """JAX's persistent cache under $LM_CACHE_DIR/jax: compilations of >= 1 s are reused."""
  import jax
  root = os.environ.get("LM_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "lm"))
  jax.config.update("jax_compilation_cache_dir", os.path.join(root, "jax"))


def _write_json(path: str, report: dict):
  """Writes atomically: a crash never leaves half a file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(report, f, indent=1)
  os.replace(tmp, path)


def _main(argv):
  args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
  if not os.path.exists(os.path.join(args.model_dir, "model.json")):
    raise UserError(f"{args.model_dir} is not an lm model directory (no model.json)")
  tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
  if args.data_dir is not None and not os.path.isdir(args.data_dir):
    raise UserError(f"--data_dir {args.data_dir} is not a directory")
  from lm.evaluation import get_task  # after the cheap checks: JAX takes seconds to load
  for name in tasks:
    get_task(name)
  if not args.no_compilation_cache:
    _use_compilation_cache()
  import lm
  from lm.evaluation.runner import evaluate, format_table
  from lm.training import checkpoints
  step = args.step
  if step is None:
    step = checkpoints.latest_step(os.path.join(os.path.abspath(args.model_dir), "checkpoints"))
  model = lm.load(args.model_dir, step, args.mesh_shape)
  report = evaluate(model, tasks, num_fewshot=args.num_fewshot, limit=args.limit,
                    batch_size=args.batch_size, seed=args.seed, data_dir=args.data_dir,
                    seq_len=args.seq_len, stride=args.stride,
                    fewshot_sampling=args.fewshot_sampling,
                    config={"model_dir": os.path.abspath(args.model_dir), "step": step,
                            "mesh_shape": args.mesh_shape})
  print(format_table(report))
  path = os.path.join(args.model_dir, "eval", f"step_{step}.json")
  _write_json(path, report)
  print(f"wrote {path}")


def main(argv=None):
  sys.exit(run_main(_main, argv))


if __name__ == "__main__":
  main()
