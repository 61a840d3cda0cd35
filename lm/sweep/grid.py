"""Grids of gin bindings: `NAME=[v1, v2, ...]` flags, their product (or zip), readable run names."""
import ast
import itertools
import re

from lm.errors import UserError


def parse_grid(spec: str) -> tuple[str, list]:
  """`'ModelConfig.positions=["rope","alibi"]'` -> ('ModelConfig.positions', ['rope', 'alibi']).

  Values are Python literals (strings, numbers, booleans, None, tuples), which gin reads too.
  """
  name, sep, values = spec.partition("=")
  name = name.strip()
  if not sep or not re.fullmatch(r"[A-Za-z_][\w.]*(/[\w.]+)?", name):
    raise UserError(f"--grid {spec!r}: expected NAME=[value, ...]")
  try:
    values = ast.literal_eval(values.strip())
  except (ValueError, SyntaxError):
    raise UserError(f"--grid {spec!r}: the values must be a list of Python literals, e.g. "
                    "[\"rope\", \"alibi\"] or [1e-3, 3e-4]") from None
  if not isinstance(values, (list, tuple)) or not values:
    raise UserError(f"--grid {spec!r}: expected a non-empty list of values")
  return name, list(values)


def expand(grids: list[tuple[str, list]], zipped: bool = False) -> list[dict]:
  """The sweep's points, each {binding name: value}: the product of the grids, or their zip.

  The last grid varies fastest in the product, as nested loops written in flag order.
  """
  names = [name for name, _ in grids]
  if len(set(names)) != len(names):
    raise UserError(f"--grid: a binding appears twice ({', '.join(names)})")
  lists = [values for _, values in grids]
  if zipped:
    if len({len(v) for v in lists}) > 1:
      raise UserError("--zip needs grids of equal length, got "
                      + ", ".join(f"{n}: {len(v)}" for n, v in grids))
    rows = zip(*lists)
  else:
    rows = itertools.product(*lists)
  return [dict(zip(names, row)) for row in rows]


def gin_binding(name: str, value) -> str:
  """The `--gin.NAME=value` flag that sets one grid value (repr is a gin literal)."""
  return f"--gin.{name}={value!r}"


def run_names(points: list[dict]) -> list[str]:
  """A readable, unique directory name per point: `positions-rope_SEED-1`.

  Each binding is named by its last dotted part unless two grids share it; a name that would
  repeat (values differing only in characters a file name cannot keep) gets its index.
  """
  names = list(points[0]) if points else []
  short = [n.rsplit(".", 1)[-1].split("/")[-1] for n in names]
  keys = {n: (s if short.count(s) == 1 else n) for n, s in zip(names, short)}
  out = []
  for i, point in enumerate(points):
    parts = [f"{_clean(keys[n])}-{_clean(_text(v))}" for n, v in point.items()]
    out.append("_".join(parts) or "run")
  if len(set(out)) != len(out):
    out = [f"{i:03d}_{name}" for i, name in enumerate(out)]
  return out


def _text(value) -> str:
  if isinstance(value, (list, tuple)):
    return "x".join(_text(v) for v in value)
  return str(value)


def _clean(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9.+-]+", "", text.replace("_", "")) or "none"
