"""Shared CLI plumbing: gin files and `--gin.NAME=value` bindings, user errors without tracebacks."""
import argparse
import contextlib
import os
import sys
import tokenize

import gin
import gin.resource_reader

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


# The checkout lm runs from (an editable install or PYTHONPATH), if it holds the configs.
_LM_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_LM_ROOT = _LM_ROOT if os.path.isdir(os.path.join(_LM_ROOT, "gin_configs")) else None


@contextlib.contextmanager
def _include_search_path(files):
  """Gin resolves a relative include against, in order: the tree of each gin file given, the
  working directory, then lm's own checkout; never against sys.path.

  Gin tries its prefixes in list order, starting with '' (the working directory), and for each
  also gin.resource_reader, which reads 'a/b/x.gin' as package `a.b` on sys.path: with the
  repository on sys.path it finds `gin_configs.runs` as a namespace package without a file and
  raises a TypeError, and with another checkout there it reads that one's file. So the given
  files' trees come first and that reader is left out. Both lists are private to gin
  (gin-config is pinned below 0.6); they are restored afterwards.
  """
  prefixes = gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  saved = list(prefixes), list(readers)
  roots = [_search_root(path) for path in files] + saved[0] + [_LM_ROOT]
  prefixes[:] = list(dict.fromkeys(r for r in roots if r is not None))
  readers[:] = [r for r in saved[1] if r[0] is not gin.resource_reader.system_path_reader]
  try:
    yield
  finally:
    prefixes[:], readers[:] = saved


def parse_gin(files, bindings):
  """Parses gin files then bindings, turning gin's errors into one-line user errors.

  Every lm entry point (lm-train, lm-info, tests, notebooks) parses gin files through here, so
  includes resolve the same way everywhere (see _include_search_path).
  """
  for path in files:
    if not os.path.exists(path):
      raise UserError(f"gin file not found: {path}")
  files = [os.path.abspath(path) for path in files]
  try:
    with _include_search_path(files):
      gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except (ValueError, IOError, SyntaxError, ImportError, tokenize.TokenError) as e:
    raise UserError(f"bad gin config: {first_line(e)}") from None


def use_compilation_cache():
  """JAX's persistent compilation cache under $LM_CACHE_DIR/jax (default ~/.cache/lm/jax): a
  second run of the same shapes loads its compiled programs (those that took >= 1 s) instead
  of compiling them. A cache directory already configured (JAX_COMPILATION_CACHE_DIR) is kept."""
  import jax
  if jax.config.jax_compilation_cache_dir:
    return
  root = os.environ.get("LM_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "lm"))
  jax.config.update("jax_compilation_cache_dir", os.path.join(root, "jax"))


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
