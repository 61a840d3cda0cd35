"""Temp files ("spills") that keep per-document data out of Beam groupings.

A local runner holds every PCollection that crosses a grouping in memory, so
anything with one record per document would make memory grow with the corpus.
Instead each bundle writes such records to files, partitioned by key, and only
(partition, path) goes through Beam; one DoFn call later reads one partition.
Partitions scale with the input size, so the memory of a call does not.

  - documents: one uncompressed JSON line per document, prefixed by its key,
    so that a shard can be written in input order by an index of (key, file,
    offset) and seeks, without holding the shard's text;
  - dedup records: a stream of pickles (hashes, MinHash signatures, band keys).
"""

import gzip
import json
import pickle
from typing import Iterable, Iterator, List, Tuple

from apache_beam.io.filesystems import FileSystems


class GzipWriter(gzip.GzipFile):
  """A gzip text writer to any Beam filesystem, with a fixed mtime so that
  identical content gives identical bytes; also closes its channel."""

  def __init__(self, path: str):
    raw = FileSystems.create(path, compression_type="uncompressed")
    # Level 1: ~10x faster than gzip's default 9 (which dominated the write
    # step) for ~25 % larger files.
    super().__init__(filename="", mode="wb", fileobj=raw, mtime=0,
                     compresslevel=1)
    self._raw = raw

  def write_record(self, record: dict) -> None:
    self.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

  def close(self):
    super().close()
    self._raw.close()


class DocWriter:
  """Writes documents as `<file_no> <pos>\\t<json>\\n` lines."""

  def __init__(self, path: str):
    self._f = FileSystems.create(path, compression_type="uncompressed")

  def write(self, doc: dict) -> None:
    file_no, pos = doc["key"]
    self._f.write(f"{file_no} {pos}\t".encode() + json.dumps(
        doc, ensure_ascii=False).encode("utf-8") + b"\n")

  def close(self) -> None:
    self._f.close()


def docs_in_key_order(paths: Iterable[str]) -> Iterator[dict]:
  """Yields the documents of all `paths` sorted by key.

  Memory: an index entry per document (not its text); files are read
  sequentially where the key order allows (one bundle's file holds runs of
  consecutive keys).
  """
  paths = sorted(paths)
  index: List[Tuple[Tuple[int, int], int, int]] = []
  for i, path in enumerate(paths):
    with FileSystems.open(path, compression_type="uncompressed") as f:
      offset = 0
      for line in iter(f.readline, b""):
        file_no, pos = line[:line.index(b"\t")].split()
        index.append(((int(file_no), int(pos)), i, offset))
        offset += len(line)
  index.sort()
  current, f = None, None
  try:
    for _, i, offset in index:
      if i != current:
        if f:
          f.close()
        current, f = i, FileSystems.open(paths[i],
                                         compression_type="uncompressed")
      f.seek(offset)
      line = f.readline()
      doc = json.loads(line[line.index(b"\t") + 1:])
      doc["key"] = tuple(doc["key"])  # JSON turned the tuple into a list.
      yield doc
  finally:
    if f:
      f.close()


class RecordWriter:
  """Appends picklable records to a file (read back by `read_records`)."""

  def __init__(self, path: str):
    self._f = FileSystems.create(path, compression_type="uncompressed")

  def write(self, record) -> None:
    self._f.write(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))

  def close(self) -> None:
    self._f.close()


def read_records(path: str) -> Iterator:
  with FileSystems.open(path, compression_type="uncompressed") as f:
    while True:
      try:
        yield pickle.load(f)
      except EOFError:
        return
