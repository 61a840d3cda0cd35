"""Shared CLI plumbing: gin files and `--gin.NAME=value` bindings, user errors without tracebacks."""
import argparse
import os
import sys

import gin

from lm.errors import UserError


def parse_args(parser: argparse.ArgumentParser, argv):
  """Parses known flags; every `--gin.NAME=value` becomes the gin binding `NAME=value`."""
  argv = sys.argv[1:] if argv is None else argv
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep:
        raise UserError(f"{arg}: expected --gin.NAME=value")
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return parser.parse_args(rest), bindings


def add_calibration_flags(parser: argparse.ArgumentParser, purpose: str):
  """--calibration_task/_rows/_len, shared by lm-prune (Wanda) and lm-quantize (GPTQ)."""
  parser.add_argument("--calibration_task",
                      help=f"{purpose}'s calibration text: ppl:<file or glob> (the model's "
                           "tokenizer) or seqio:<task>[:<split>] (default split train)")
  parser.add_argument("--calibration_rows", type=int, default=64, help="calibration windows")
  parser.add_argument("--calibration_len", type=int, default=256,
                      help="tokens per calibration window (at most the model's max_len)")


def _search_root(path: str) -> str | None:
  """The directory holding `gin_configs/`, so that includes like 'gin_configs/models/x.gin' resolve."""
  d = os.path.dirname(os.path.abspath(path))
  while d != os.path.dirname(d):
    if os.path.basename(d) == "gin_configs":
      return os.path.dirname(d)
    d = os.path.dirname(d)
  return None


def parse_gin(files, bindings):
  """Parses gin files then bindings, turning gin's errors into one-line user errors."""
  for path in files:
    if not os.path.exists(path):
      raise UserError(f"gin file not found: {path}")
    root = _search_root(path)
    if root:
      gin.add_config_file_search_path(root)
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except (ValueError, IOError, SyntaxError) as e:
    raise UserError(f"bad gin config: {first_line(e)}") from None


def first_line(e: Exception) -> str:
  """An exception's first line (gin appends its call chain to messages)."""
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def run_main(fn, argv=None) -> int:
  """Runs fn(argv) -> exit status (None: 0); a UserError prints `error: message`, status 2."""
  try:
    return fn(argv) or 0
  except UserError as e:
    print(f"error: {first_line(e)}", file=sys.stderr)  # gin appends its call chain below
    return 2
