"""The docs' commands keep working: each names a real console script or file, with flags it knows.

Read: README.md, docs/*.md, experiments/*/README.md and benchmarks/README.md; their fenced
shell blocks (```bash, sh, shell, console: the `$ ` lines) and inline code spans that start
with a command. For every command that runs a console script of setup.cfg, the script must
exist and each `--flag` must be one its parser defines (for lm-convert, the subcommand's);
`--gin.NAME=value` bindings pass, a `--gin_file` must exist. lm-prep hands flags it does not
know to Apache Beam, so those are checked against Beam's pipeline options. `python -m lm.X`
and `python path/to/script.py` must name a file of the repository, and so must the test
files a `pytest` command names.

Cheap: each script's parser is built in-process, once, by calling its main(["--help"]) with
ArgumentParser.parse_known_args replaced by a function that hands the parser back (nothing
past the parser runs); no subprocess, no training. The same files' relative links must point at
files and headings that exist.
"""
import argparse
import configparser
import functools
import glob
import importlib
import os
import re
import shlex
from unittest import mock

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELL_LANGS = {"bash", "sh", "shell", "console"}


def _doc_files():
  """Repository-relative paths of the Markdown files whose commands are checked."""
  files = ["README.md", *sorted(glob.glob("docs/*.md", root_dir=ROOT)),
           *sorted(glob.glob("experiments/*/README.md", root_dir=ROOT))]
  if os.path.exists(os.path.join(ROOT, "benchmarks", "README.md")):
    files.append("benchmarks/README.md")
  return files


@functools.lru_cache(maxsize=None)
def _entry_points():
  """{console script: "module:function"} from setup.cfg."""
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, "setup.cfg"))
  lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
  return dict((s.strip() for s in line.split("=", 1)) for line in lines)


def commands(text):
  """(line number, command line, fenced?) for each shell command of a Markdown text.

  Fenced: every line of a bash/sh/shell block that is not a comment (backslash continuations
  joined), the `$ ` lines of a console block. Inline: code spans (which may wrap lines) whose
  first word is a console script, `python` or `pytest`.
  """
  lines = text.split("\n")
  prose = []  # the text outside fences, for the inline spans
  i = 0
  while i < len(lines):
    fence = re.match(r"^\s*```\s*(\w*)", lines[i])
    if not fence:
      prose.append(lines[i])
      i += 1
      continue
    lang, i = fence.group(1), i + 1
    prose.append("")
    while i < len(lines) and not lines[i].strip().startswith("```"):
      start, line = i, lines[i].strip()
      while line.endswith("\\") and i + 1 < len(lines):
        i += 1
        line = line[:-1] + " " + lines[i].strip()
      i += 1
      prose.extend([""] * (i - start))
      if lang == "console":
        if line.startswith("$ "):
          yield start + 1, line[2:], True
      elif lang in SHELL_LANGS and line and not line.startswith("#"):
        yield start + 1, line, True
    i += 1
    prose.append("")
  body = "\n".join(prose)
  for span in re.finditer(r"(?<!`)`([^`]+)`(?!`)", body):
    words = span.group(1).split()
    if words and (words[0] in _entry_points() or words[0] in ("python", "python3", "pytest")):
      yield body.count("\n", 0, span.start()) + 1, " ".join(words), False


def _split(line):
  """The simple commands of a command line: split at &&, ||, ; and pipes (not at the `|` of
  a usage alternative such as `[--num_samples 4 | --num_beams 4]`)."""
  try:
    tokens = shlex.split(line, comments=True)
  except ValueError:  # an unbalanced quote in prose
    tokens = line.split()
  current = []
  for k, token in enumerate(tokens):
    alternative = token == "|" and k + 1 < len(tokens) and tokens[k + 1][:1] in ("-", "[")
    if token in ("&&", "||", ";") or (token == "|" and not alternative):
      yield current
      current = []
    else:
      current.append(token)
  yield current


class _Parser(BaseException):
  """Carries a parser out of a CLI's main (BaseException: run_main catches only UserError)."""

  def __init__(self, parser):
    super().__init__()
    self.parser = parser


@functools.lru_cache(maxsize=None)
def cli_parser(script) -> argparse.ArgumentParser:
  """The argparse parser that console script builds, captured in-process (nothing else runs)."""
  module, function = _entry_points()[script].split(":")
  main = getattr(importlib.import_module(module), function)

  def hand_back(self, args=None, namespace=None):
    raise _Parser(self)

  with mock.patch.object(argparse.ArgumentParser, "parse_known_args", hand_back):
    try:
      main(["--help"])
    except _Parser as parsed:
      return parsed.parser
  raise AssertionError(f"{script}: main(['--help']) returned without parsing its arguments")


def _flags(parser):
  # argparse has no public listing of a parser's options; _actions is what --help prints.
  actions = parser._actions  # pylint: disable=protected-access
  return {s for action in actions for s in action.option_strings}


def _subcommands(parser):
  return {name: sub for action in parser._actions  # pylint: disable=protected-access
          if isinstance(action, argparse._SubParsersAction)  # pylint: disable=protected-access
          for name, sub in action.choices.items()}


@functools.lru_cache(maxsize=None)
def _beam_flags():
  """Every option of Apache Beam's PipelineOptions subclasses (what lm-prep passes on)."""
  try:
    from apache_beam.options import pipeline_options
  except ImportError:
    return None
  try:
    from apache_beam.runners.dask import dask_runner  # noqa: F401  (registers DaskOptions)
  except ImportError:
    pass
  parser = pipeline_options._BeamArgumentParser(  # pylint: disable=protected-access
      allow_abbrev=False)
  # As PipelineOptions.get_all_options builds its parser: one class per name.
  classes = {str(c): c for c in pipeline_options.PipelineOptions.__subclasses__()}
  for cls in classes.values():
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
  return _flags(parser)


def _flag_name(token):
  """`--name` of a flag token, usage brackets stripped (`[--step`, `--seq_len=2048]`); else None."""
  token = token.lstrip("[(")
  if not token.startswith("--") or token == "--":
    return None
  return token.split("=", 1)[0].rstrip("]),")


def check_command(tokens, fenced=True):
  """Problems (strings) with one simple command; [] when it is fine or not lm's to check."""
  while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
    tokens = tokens[1:]  # VAR=value prefixes
  if not tokens:
    return []
  word, args = tokens[0], tokens[1:]
  if word in ("python", "python3"):
    return _check_python(args)
  if word == "pytest":
    return [f"pytest {a}: no such file" for a in args if a.startswith("tests/")
            and not glob.glob(os.path.join(ROOT, a.split("::")[0]))]
  if word not in _entry_points():
    return [f"{word}: not a console script of setup.cfg"] if word.startswith("lm-") else []
  parser = cli_parser(word)
  known = _flags(parser)
  subcommands = _subcommands(parser)
  problems = []
  if subcommands:
    name = next((a for a in args if not a.startswith("-")), None)
    if name in subcommands:
      known = _flags(subcommands[name])
    elif fenced:
      return [f"{word}: unknown subcommand {name!r} (known: {', '.join(sorted(subcommands))})"]
    else:  # prose shorthand such as `lm-convert import-hf/import-gguf`
      known = set().union(*(_flags(p) for p in subcommands.values()))
  for k, token in enumerate(args):
    flag = _flag_name(token)
    if flag is None:
      continue
    if flag.startswith("--gin."):
      if "=" not in token:
        problems.append(f"{word} {token}: a binding is --gin.NAME=value")
      continue
    if flag not in known:
      beam = _beam_flags() if word == "lm-prep" else None
      if beam is None or flag not in beam:
        problems.append(f"{word}: unknown flag {flag}")
      continue
    if flag == "--gin_file":
      value = token.split("=", 1)[1] if "=" in token else (args[k + 1] if k + 1 < len(args) else "")
      value = value.rstrip("]")
      if value != "..." and not os.path.exists(os.path.join(ROOT, value)):
        problems.append(f"{word}: --gin_file {value} does not exist")
  return problems


def _check_python(args):
  if args[:1] == ["-m"] and len(args) > 1:
    module = args[1]
    if module != "lm" and not module.startswith("lm."):
      return []  # another package's module (python -m lm_eval)
    path = os.path.join(ROOT, *module.split("."))
    if not (os.path.exists(path + ".py") or os.path.exists(os.path.join(path, "__main__.py"))):
      return [f"python -m {module}: no such module in the repository"]
    return []
  script = next((a for a in args if not a.startswith("-")), None)
  if script and script.endswith(".py") and not os.path.exists(os.path.join(ROOT, script)):
    return [f"python {script}: no such file"]
  return []


def check_line(line, fenced=True):
  return [p for tokens in _split(line) for p in check_command(tokens, fenced)]


def _all_commands():
  for path in _doc_files():
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
      for lineno, line, fenced in commands(f.read()):
        yield path, lineno, line, fenced


def test_doc_commands_name_real_scripts_and_flags():
  found = list(_all_commands())
  assert len(found) > 50, "the docs hold far more commands than were extracted"
  problems = [f"{path}:{lineno}: {p}\n    {line}" for path, lineno, line, fenced in found
              for p in check_line(line, fenced)]
  assert not problems, "\n".join(problems)


def test_readme_keeps_the_two_commands():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    fenced = [line for _, line, is_fenced in commands(f.read()) if is_fenced]
  assert ("pip install -e . && lm-train --gin_file=gin_configs/runs/shakespeare_char_cpu.gin "
          "--model_dir=/tmp/lm/shakespeare") in fenced
  assert "pip install -e '.[test,prep,hf,wandb]' && pytest" in fenced


@pytest.mark.parametrize("line, expected", [
    ("lm-train --gin_file=gin_configs/runs/shakespeare_char_cpu.gin --model_dir=/tmp/x "
     "--no_such_flag", "unknown flag --no_such_flag"),
    ("pip install -e . && lm-sample --model_dir=D [--num_sample 4 | --num_beams 4]",
     "unknown flag --num_sample"),
    ("lm-train --gin_file=gin_configs/runs/no_such_run.gin --model_dir=/tmp/x",
     "--gin_file gin_configs/runs/no_such_run.gin does not exist"),
    ("lm-train --gin_file=gin_configs/runs/shakespeare_char_cpu.gin --model_dir=/tmp/x --gin.SEED",
     "a binding is --gin.NAME=value"),
    ("lm-convert import-hff --hf_dir H --model_dir M", "unknown subcommand 'import-hff'"),
    ("lm-convert export-hf --model_dir M --hf_dir H --scan_layers", "unknown flag --scan_layers"),
    ("lm-prep --input 'x/*.txt' --output_dir D --runner=DirectRunner --no_such_beam_flag=1",
     "unknown flag --no_such_beam_flag"),
    ("lm-sampel --model_dir D", "lm-sampel: not a console script"),
    ("python benchmarks/no_such_benchmark.py --steps 3", "no such file"),
    ("python -m lm.no_such_module --x 1", "no such module"),
    ("pytest -s tests/test_no_such_file.py", "no such file"),
])
def test_checker_rejects_a_bad_command(line, expected):
  problems = check_line(line)
  assert len(problems) == 1 and expected in problems[0], problems


def test_checker_accepts_good_commands():
  assert check_line("lm-train --gin_file=gin_configs/runs/pretrain.gin --model_dir=/tmp/x "
                    "--gin.TRAIN_STEPS=5 [--verbose]") == []
  assert check_line("lm-convert import-gguf --gguf F --model_dir M [--scan_layers]") == []
  assert check_line("lm-prep --input 'a/*.txt' --output_dir D --runner=FlinkRunner "
                    "--flink_master=host:8081") == []
  assert check_line("TORCH_PEER=p python experiments/shakespeare_char/run.py --seeds 0") == []
  assert check_line("python -m lm.cli.eval --model_dir M") == []
  assert check_line("pytest -s tests/test_docs_commands.py::test_slug_matches_github") == []


def _slug(heading):
  """GitHub's anchor of a Markdown heading."""
  text = heading.strip().lower().replace("`", "")
  return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path):
  with open(path, encoding="utf-8") as f:
    text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
  return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def link_problems(full):
  """Relative links of one Markdown file that point at no file, or at no heading of it."""
  with open(full, encoding="utf-8") as f:
    text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
  problems = []
  for m in re.finditer(r"\]\(([^)\s]+)\)", text):
    target = m.group(1)
    if re.match(r"^[a-z]+:", target):
      continue  # https:, mailto:
    file, _, anchor = target.partition("#")
    dest = os.path.normpath(os.path.join(os.path.dirname(full), file)) if file else full
    if not os.path.exists(dest):
      problems.append(f"link {target}: no such file")
    elif anchor and dest.endswith(".md") and anchor not in _anchors(dest):
      problems.append(f"link {target}: no such heading")
  return problems


def test_doc_links_resolve():
  problems = [f"{path}: {p}" for path in _doc_files()
              for p in link_problems(os.path.join(ROOT, path))]
  assert not problems, "\n".join(problems)


def test_link_checker_rejects_bad_links(tmp_path):
  (tmp_path / "a.md").write_text("# Top\n\n## The start rule\n")
  doc = tmp_path / "b.md"
  doc.write_text("[ok](a.md#the-start-rule) [self](#here) [gone](c.md) [moved](a.md#training)\n"
                 "[web](https://example.org/x)\n\n# Here\n")
  assert link_problems(str(doc)) == ["link c.md: no such file",
                                     "link a.md#training: no such heading"]


def test_slug_matches_github():
  assert (_slug("`data_resume.py`: resuming the input pipeline")
          == "data_resumepy-resuming-the-input-pipeline")
  assert _slug("KV-cache decoding (`lm.decoding`)") == "kv-cache-decoding-lmdecoding"
