"""JSON files: JSON-lines read with one clear error per problem (the file, the line, the
reason), and whole JSON files read (None when absent) and written."""
import gzip
import json
import os

from lm.errors import UserError


def read_jsonl(path: str, missing: str | None = None) -> list[tuple[int, object]]:
  """(line number, value) of every non-blank line of a JSON-lines file (gzipped: *.gz).

  A missing file (message `missing`, by default "file not found: PATH"), invalid UTF-8 or a
  line that is not JSON raises one UserError naming the file and line.
  """
  if not os.path.isfile(path):
    raise UserError(missing or f"file not found: {path}")
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rt", encoding="utf-8") as f:
      lines = f.readlines()
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: invalid UTF-8 ({e})") from None
  except (gzip.BadGzipFile, EOFError) as e:
    raise UserError(f"{path}: not a complete gzip file ({e})") from None
  records = []
  for n, line in enumerate(lines, 1):
    if line.strip():
      try:
        records.append((n, json.loads(line)))
      except json.JSONDecodeError as e:
        raise UserError(f"{path}:{n}: not JSON ({e.msg})") from None
  return records


def read_json(path: str) -> dict | None:
  """The JSON value in `path`, or None if there is no such file."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_json(path: str, value):
  """Writes `value` to `path` as indented JSON (UTF-8, non-ASCII kept)."""
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, ensure_ascii=False)
