"""Stop strings: where a row of new tokens ends, and the text cut before the stop."""
from typing import Sequence


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
  """The text before the first of the stop strings it contains (all of it if none)."""
  hits = [text.find(s) for s in stop or () if s in text]
  return text[:min(hits)] if hits else text


def stop_end(tokenizer, row: Sequence[int], stop: Sequence[str]) -> int | None:
  """Tokens to keep: up to the one whose text completes the first stop string, or None."""
  text = tokenizer.decode(row)
  hits = [text.find(s) for s in stop if s in text]
  if not hits:
    return None
  first = min(hits)
  for end in range(1, len(row) + 1):
    if any(s in tokenizer.decode(row[:end])[first:] for s in stop):
      return end
  return len(row)


def apply_stops(tokenizer, rows, stop: Sequence[str] | None):
  """(rows cut after the token completing a stop string, which rows hit one; None without
  stop strings)."""
  if not stop:
    return rows, None
  cut, done = [], []
  for row in rows:
    end = stop_end(tokenizer, row, stop)
    cut.append(row if end is None else row[:end])
    done.append(end is not None)
  return cut, done
