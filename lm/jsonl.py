"""JSON-lines files read with one clear error per problem: the file, the line, the reason."""
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
