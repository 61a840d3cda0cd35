"""Input discovery and reading: files -> documents with stable ids.

A document travels through the pipeline as a plain dict:
  key:    (file number, position): unique, compact (it travels through every
          dedup grouping), and its order is the input order, i.e. "earliest"
          for dedup (the first document in the input order wins);
  id:     the `id` field of a JSONL record, else "<path>#<position>";
  text:   decoded text;
  extra:  the other JSONL fields, written back unchanged (an input field named
          `text` or `id` never replaces the document's own, processed ones);
  reason: None while kept, else why it was removed (e.g. "decode_error");
  words:  added by the pipeline: the word count of the final text.
"""

import gzip
import json
import re
from typing import Iterator, List, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems

from lm.data.prep.config import ReadConfig
from lm.errors import UserError

_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
_BLANK_LINE = re.compile(rb"\n(?:[ \t\r\f\v]*\n)+")
_CHUNK = 1 << 20  # Bytes read at a time by the scans of plan_ranges.


class InputError(UserError, ValueError):
  """A user error in the inputs (reported as one line, no traceback)."""


def expand_inputs(globs: Sequence[str]) -> List[Tuple[int, str, int]]:
  """Returns (file number, path, size in bytes) for every matched file.

  Files are numbered in input order: by --input, then by path.

  Raises InputError naming the first glob that matches nothing.
  """
  files = []
  for pattern in globs:
    try:
      matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # Beam raises BeamIOError for a bad scheme, etc.
      raise InputError(f"cannot list --input {pattern!r}: {e}") from None
    if not matched:
      raise InputError(f"no file matches --input {pattern!r}")
    for m in sorted(matched, key=lambda m: m.path):
      if not m.path.endswith((".txt",) + _JSONL_SUFFIXES):
        raise InputError(
            f"{m.path}: unsupported input type (want .txt, .jsonl, .jsonl.gz)")
      files.append((len(files), m.path, m.size_in_bytes))
  return files


def _decode(raw: bytes, on_error: str) -> Tuple[str, bool]:
  """Returns (text, ok); invalid UTF-8 is replaced by U+FFFD in the text."""
  try:
    return raw.decode("utf-8"), True
  except UnicodeDecodeError:
    return raw.decode("utf-8", errors="replace"), on_error == "replace"


def _doc(key, doc_id, text, extra=None, reason=None) -> dict:
  return {"key": key, "id": doc_id, "text": text, "extra": extra or {},
          "reason": reason}


def _read_txt(file_no: int, path: str, data: bytes, cfg: ReadConfig,
              first: int = 0):
  blocks = [data] if cfg.split == "file" else [
      b for b in _BLANK_LINE.split(data) if b.strip()]
  for pos, block in enumerate(blocks, first):
    text, ok = _decode(block, cfg.on_decode_error)
    yield _doc((file_no, pos), f"{path}#{pos}", text,
               reason=None if ok else "decode_error")


def _read_jsonl_line(file_no, path, pos, line: bytes, cfg: ReadConfig) -> dict:
  key, default_id = (file_no, pos), f"{path}#{pos}"
  text, ok = _decode(line, cfg.on_decode_error)
  try:
    record = json.loads(text)
  except ValueError:
    return _doc(key, default_id, text, reason="parse_error")
  if not isinstance(record, dict) or not isinstance(
      record.get(cfg.text_key), str):
    return _doc(key, default_id, text, reason="parse_error")
  doc_text = record.pop(cfg.text_key)
  doc_id = str(record.pop("id")) if "id" in record else default_id
  return _doc(key, doc_id, doc_text, record,
              None if ok else "decode_error")


def _open(path: str):
  """The decompressed byte stream of `path` (seekable; gzip seeks forward by
  decompressing). Python's gzip, unlike Beam's, raises on a truncated stream."""
  raw = FileSystems.open(path, compression_type="uncompressed")
  return gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw


def plan_ranges(files, range_bytes: int, split: str = "file") -> List[Tuple]:
  """Cuts every input file into ranges that workers read independently.

  A range is (file, start, end, first): the documents that start in [start,
  end) of the decompressed file, and the position of the first of them, so
  that document keys and ids are those of a whole-file read. A .jsonl(.gz)
  file larger than range_bytes / 4 on disk is scanned once (a newline count
  at decompression speed) and cut every range_bytes decompressed bytes into
  ranges of lines. With `split` (ReadConfig.split) "paragraphs", a .txt file
  larger than range_bytes is scanned once for blank-line separators and cut
  at the end of the first separator at least range_bytes after the range's
  start, so a range holds whole blocks; `first` counts the non-empty blocks
  before it. Other .txt files (one document each) and smaller files are one
  range (end None: to the end of the file). A file that cannot be scanned is
  one range too, so that its reader reports the error.
  """
  ranges = []
  for file in files:
    _, path, size = file
    txt = path.endswith(".txt")
    if (txt and split == "file") or size <= (
        range_bytes if txt else range_bytes // 4):
      ranges.append((file, 0, None, 0))
      continue
    try:
      ranges.extend((_scan_txt if txt else _scan)(file, range_bytes))
    except (OSError, EOFError, ValueError):
      ranges.append((file, 0, None, 0))
  return ranges


def _scan(file, range_bytes: int) -> List[Tuple]:
  ranges, start, first = [], 0, 0  # Current range, newlines before it.
  offset, newlines = 0, 0  # Decompressed bytes read, newlines in them.
  with _open(file[1]) as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      while start + range_bytes < offset + len(chunk):  # A cut in chunk.
        cut = start + range_bytes
        ranges.append((file, start, cut, first))
        start, first = cut, newlines + chunk.count(b"\n", 0, cut - offset)
      newlines += chunk.count(b"\n")
      offset += len(chunk)
  ranges.append((file, start, None, first))
  return ranges


def _scan_txt(file, range_bytes: int) -> List[Tuple]:
  ranges, start, first = [], 0, 0  # Current range, blocks before it.
  blocks, nonempty = 0, False  # Non-empty blocks ended; is the open one?
  buf, buf_at = b"", 0  # Bytes not yet scanned, and their file offset.
  with _open(file[1]) as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      buf += chunk
      # A separator reaching the trailing spaces of buf may go on in the next
      # chunk; one ending before them is the whole-file read's separator.
      final = len(buf.rstrip(b" \t\r\f\v"))
      done = 0  # buf[:done] ends at a separator (or is carried in nonempty).
      for m in _BLANK_LINE.finditer(buf):
        if m.end() >= final:
          break
        blocks += nonempty or bool(buf[done:m.start()].strip())
        nonempty, done = False, m.end()
        if buf_at + done >= start + range_bytes:
          ranges.append((file, start, buf_at + done, first))
          start, first = buf_at + done, blocks
      # Keep only what a later separator may start at: the newline that
      # begins buf's trailing whitespace (no separator starts before it).
      keep = buf.find(b"\n", max(done, len(buf.rstrip())))
      keep = len(buf) if keep < 0 else keep
      nonempty = nonempty or bool(buf[done:keep].strip())
      # Two or more newlines there already are a separator: only what follows
      # its last newline can still change where it ends (a long blank run is
      # not rescanned chunk after chunk).
      last = buf.rfind(b"\n", keep + 1)
      if last < 0:
        buf, buf_at = buf[keep:], buf_at + keep
      else:  # b"\n\n" stands for buf[keep:last + 1], ending at the same byte.
        buf, buf_at = b"\n\n" + buf[last + 1:], buf_at + last - 1
  ranges.append((file, start, None, first))
  return ranges


def read_range(rng: Tuple, cfg: ReadConfig) -> Iterator[dict]:
  """Yields every document of one range (plan_ranges), bad ones with a
  `reason`.

  A file that cannot be read (e.g. truncated gzip) yields one `read_error`
  record instead of failing the pipeline.
  """
  (file_no, path, _), start, end, pos = rng
  try:
    with _open(path) as f:
      if path.endswith(".txt"):
        f.seek(start)
        data = f.read() if end is None else f.read(end - start)
        yield from _read_txt(file_no, path, data, cfg, pos)
        return
      if start:
        # The line with byte start-1 belongs to the previous range: skip to
        # the end of it.
        f.seek(start - 1)
        if f.read(1) != b"\n":
          start += len(f.readline())
          pos += 1
      for pos, line in enumerate(iter(f.readline, b""), pos):
        if end is not None and start >= end:
          return
        start += len(line)
        if line.strip():
          yield _read_jsonl_line(file_no, path, pos, line, cfg)
  except (OSError, EOFError, ValueError) as e:
    yield _doc((file_no, pos + 1), f"{path}#read_error", str(e),
               reason="read_error")


def read_file(file: Tuple[int, str, int], cfg: ReadConfig) -> Iterator[dict]:
  """Yields every document of one whole file (read_range of one range)."""
  yield from read_range((file, 0, None, 0), cfg)
