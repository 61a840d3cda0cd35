"""lm-sample: sample text from a trained run.

  lm-sample --model_dir=/tmp/lm/shakespeare --prompt="ROMEO:" --num_tokens=300
"""
import argparse
import os

import numpy as np

from lm.cli.common import run_main
from lm.errors import UserError


def _main(argv):
  parser = argparse.ArgumentParser(prog="lm-sample", description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--prompt", default="\n")
  parser.add_argument("--num_tokens", type=int, default=300)
  parser.add_argument("--num_samples", type=int, default=1)
  parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
  parser.add_argument("--top_k", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if not os.path.exists(os.path.join(args.model_dir, "model.json")):
    raise UserError(f"{args.model_dir} is not an lm run directory (no model.json)")
  import lm
  from lm.data.pipeline import vocabulary
  model = lm.load(args.model_dir)
  if not model.task:
    raise UserError(f"{args.model_dir} does not name the task whose vocabulary decodes it")
  vocab = vocabulary(model.task)
  prompt = np.array([vocab.encode(args.prompt)] * args.num_samples, np.int32)
  if prompt.shape[1] == 0:
    raise UserError("the prompt encodes to no tokens")
  tokens = model.sample(prompt, args.num_tokens, args.temperature, args.top_k, args.seed)
  for row in tokens:
    print(vocab.decode(row.tolist()))
    print("-" * 60)


def main(argv=None):
  raise SystemExit(run_main(_main, argv))


if __name__ == "__main__":
  main()
