"""The Beam graph of `lm-prep`.

  file ranges -> read -> ProcessDoc (decode .. decontaminate, per document)
    |-- docs -> spill files, one per (shard, bundle) -> (shard, path) ------.
    |-- hashes, signatures -> spill files per (partition, bundle)            |
    |     -> DedupPartition -> exact decisions ---------------------------+-> by
    |                       '-> near edges -> components -> decisions ----'  shard
    '-- stats (summed in the bundle) ---------------------------> report  WriteShard

Nothing with one record per document goes through Beam's groupings: texts,
hashes and signatures are spilled to DIR.tmp/_work and only their paths are
grouped, so neither a local runner's memory nor a distributed shuffle grows
with the corpus (one call holds one dedup partition or one shard's index).
Each output shard (a hash of the document key) is joined with its dedup
decisions and written in input order, so the output is byte-identical for any
runner, worker count and split of the input into ranges.

ProcessDoc has one output of (tag, value) pairs, split by `_only`, and emits
spill paths when it opens a file: the Dask runner keeps neither a DoFn's
tagged outputs apart nor what finish_bundle emits.
"""

import collections
import json
import math
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from lm.data.prep import (audit, clean, decontam, dedup, normalize, pii,
                          quality, readers, spill, splits)
from lm.data.prep.config import PrepConfig

# Auto sharding: one output shard per 16 MB of input (gzip: ~40 MB of text),
# which bounds the memory of the step that sorts and writes a shard.
SHARD_BYTES = 16 << 20
# One dedup partition per 2 MB of input: a partition call holds ~20k
# signatures (one per LSH band of ~1,000 documents), whatever the corpus size.
PARTITION_BYTES = 2 << 20
STATS_FILE = "_stats.json"
WORK_DIR = "_work"  # Spilled documents, deleted after the run.


def measure(stats, stage: str, side: str, text: str, words=None) -> int:
  """Adds one document's docs/chars/words to `stage`'s in or out counts.

  Returns the word count; pass it back as `words` when the text is unchanged
  to skip re-splitting it.
  """
  words = len(text.split()) if words is None else words
  stats[f"{stage}/docs_{side}"] += 1
  stats[f"{stage}/chars_{side}"] += len(text)
  stats[f"{stage}/words_{side}"] += words
  return words


def length_bin(text: str) -> int:
  """Log2 bin of the character length (0 for empty text)."""
  return int(math.log2(len(text))) + 1 if text else 0


def shard_of(key, num_shards: int) -> int:
  return splits.stable_hash(repr(key)) % num_shards


class SumCounters(beam.CombineFn):
  """Sums the per-document stats Counters into one dict."""

  def create_accumulator(self):
    return collections.Counter()

  def add_input(self, acc, counts):
    acc.update(counts)
    return acc

  def merge_accumulators(self, accs):
    total = collections.Counter()
    for acc in accs:
      total.update(acc)
    return total

  def extract_output(self, acc):
    return dict(acc)


def _only(item, tag):
  """The value of a (tag, value) pair with this tag."""
  if item[0] == tag:
    yield item[1]


class ProcessDoc(beam.DoFn):
  """Runs the per-document stages; spills documents and dedup records.

  Emits ("spill", (shard, path)), ("dedup", (partition, path)) once per file
  it opens and ("stats", Counter) per document, so no runner ever buffers or
  shuffles the corpus text or per-document dedup records.
  """

  def __init__(self, cfg: PrepConfig, tmp_dir: str, num_shards: int,
               num_parts: int):
    self._cfg, self._tmp = cfg, tmp_dir
    self._num_shards, self._num_parts = num_shards, num_parts

  def setup(self):
    cfg = self._cfg
    self._terms = audit.load_terms(cfg.audit_terms)
    eval_ngrams = decontam.load_eval_ngrams(cfg.decontaminate,
                                            cfg.decontam_ngram)
    stages = []
    if cfg.normalize.enabled:
      stages.append(("normalize", lambda t, s: (
          normalize.normalize_text(t, cfg.normalize), None)))
    if cfg.clean.enabled:
      stages.append(("clean", self._clean))
    if cfg.quality.languages:
      stages.append(("language", lambda t, s: (
          t, quality.language_reason(t, cfg.quality.languages))))
    if cfg.quality.enabled:
      stages.append(("quality", lambda t, s: (
          t, _prefixed("quality", quality.quality_reason(t, cfg.quality)))))
    if cfg.pii.enabled:
      stages.append(("pii", self._scrub))
    if eval_ngrams:
      stages.append(("decontaminate", lambda t, s: (t, decontam.contaminated(
          t, eval_ngrams, cfg.decontam_ngram))))
    self._stages = stages

  def start_bundle(self):
    self._files = {}  # (tag, shard or partition) -> writer

  def finish_bundle(self):
    for writer in self._files.values():
      writer.close()

  def _writer(self, tag, n, make):
    """Yields (tag, (n, path)) if the bundle's file for (tag, n) is new."""
    if (tag, n) not in self._files:
      # A retried bundle writes a new file; only committed paths are read.
      path = f"{self._tmp}/{WORK_DIR}/{tag}-{n:05d}-{uuid.uuid4().hex}"
      self._files[tag, n] = make(path)
      yield tag, (n, path)

  def _clean(self, text, stats):
    cleaned, reason, line_counts = clean.clean_lines(text, self._cfg.clean)
    stats.update({f"clean_lines/{k}": v for k, v in line_counts.items()})
    return (text if cleaned is None else cleaned), reason

  @staticmethod
  def _scrub(text, stats):
    text, counts = pii.scrub_pii(text)
    stats.update({f"pii_replaced/{k}": v for k, v in counts.items()})
    return text, None

  def process(self, doc):
    stats = collections.Counter()
    text = doc["text"]
    words = measure(stats, "read", "in", text)
    stats[f"hist_before/{length_bin(text)}"] += 1
    stats.update(audit.audit_counts(text, self._terms, "audit_before"))
    if doc["reason"] is None and not text.strip():
      doc["reason"] = "empty"
    if doc["reason"] is None:
      measure(stats, "read", "out", text, words)
      for stage, fn in self._stages:
        measure(stats, stage, "in", text, words)
        start = time.perf_counter()
        new_text, reason = fn(text, stats)
        if reason is None and not new_text:
          reason = f"{stage}:empty"
        stats[f"{stage}/seconds"] += time.perf_counter() - start
        if reason:
          doc["reason"] = reason
          break
        if new_text is not text:  # Only re-count words of changed text.
          text, words = new_text, None
        words = measure(stats, stage, "out", text, words)
    if doc["reason"] is None:
      for part, record in dedup.dedup_records(
          (doc["key"], doc["id"]), text, self._cfg.dedup, self._num_parts,
          stats):
        yield from self._writer("dedup", part, spill.RecordWriter)
        self._files["dedup", part].write(record)
    else:
      stats[f"removed/{doc['reason']}"] += 1
    doc["text"], doc["words"] = text, words
    shard = shard_of(doc["key"], self._num_shards)
    yield from self._writer("spill", shard, spill.DocWriter)
    self._files["spill", shard].write(doc)
    yield "stats", stats


def _prefixed(prefix, reason):
  return reason and f"{prefix}:{reason}"


def _final_reason(doc, decisions, stats):
  """The doc's reason after dedup, counting the dedup stages' in/out."""
  text, reason, words = doc["text"], doc["reason"], doc["words"]
  if reason is not None:
    return reason
  decision = decisions.get(doc["key"])
  for stage, kind in (("exact_dedup", "exact_dup_of"),
                      ("near_dedup", "near_dup_of")):
    measure(stats, stage, "in", text, words)
    if decision and decision[0] == kind:
      stats[f"removed/{kind[:-3]}"] += 1
      return f"{kind}:{decision[1]}"
    measure(stats, stage, "out", text, words)
  return None


class WriteShard(beam.DoFn):
  """Writes one output shard (kept + removed), sorted by input order."""

  def __init__(self, cfg: PrepConfig, tmp_dir: str, num_shards: int):
    self._cfg, self._tmp, self._num_shards = cfg, tmp_dir, num_shards

  def setup(self):
    self._terms = audit.load_terms(self._cfg.audit_terms)

  def process(self, item):
    shard, joined = item
    decisions = {}
    for key, decision in joined["decision"]:
      # A document can be both; the exact duplicate is the better reason.
      if key not in decisions or decision[0] == "exact_dup_of":
        decisions[key] = decision
    stats = collections.Counter()
    name = f"{shard:05d}-of-{self._num_shards:05d}.jsonl.gz"
    with spill.GzipWriter(f"{self._tmp}/data-{name}") as kept, \
        spill.GzipWriter(f"{self._tmp}/removed/removed-{name}") as removed:
      for doc in spill.docs_in_key_order(joined["spill"]):
        reason = _final_reason(doc, decisions, stats)
        if reason:
          removed.write_record(
              {"id": doc["id"], "reason": reason, "text": doc["text"]})
          continue
        # Pass-through fields never replace the id or the processed text
        # (e.g. a raw `text` field beside --text_key body).
        extra = {k: v for k, v in doc["extra"].items()
                 if k not in ("id", "text")}
        kept.write_record({"id": doc["id"], "text": doc["text"], **extra})
        measure(stats, "output", "out", doc["text"], doc["words"])
        split = splits.split_of(doc["id"], self._cfg.validation_fraction)
        stats[f"split/{split}/docs"] += 1
        stats[f"hist_after/{length_bin(doc['text'])}"] += 1
        stats.update(audit.audit_counts(doc["text"], self._terms,
                                        "audit_after"))
    yield stats


def write_json(obj, path):
  """Writes `obj` as JSON to `path` on any Beam filesystem."""
  with FileSystems.create(path) as f:
    f.write(json.dumps(obj, sort_keys=True).encode("utf-8"))


def build(p: beam.Pipeline, cfg: PrepConfig, ranges, tmp_dir: str,
          num_shards: int, num_parts: int) -> None:
  """Adds the whole prep graph to `p`; stats land in tmp_dir/_stats.json
  (no file if there were no documents)."""
  out = (p | "Ranges" >> beam.Create(ranges)
         | "SpreadRanges" >> beam.Reshuffle()
         | "Read" >> beam.FlatMap(readers.read_range, cfg.read)
         | "Process" >> beam.ParDo(ProcessDoc(cfg, tmp_dir, num_shards,
                                              num_parts)))
  # Summed right after ProcessDoc: a local runner then keeps one Counter per
  # bundle, not one per document, until the end.
  stats = [out | "DocStats" >> beam.FlatMap(_only, "stats")
           | "SumDocStats" >> beam.CombineGlobally(
               SumCounters()).without_defaults()]
  decisions = []
  if cfg.dedup.exact or cfg.dedup.near:
    found = (out | "DedupFiles" >> beam.FlatMap(_only, "dedup")
             | "ByPartition" >> beam.GroupByKey()
             | "Dedup" >> beam.ParDo(dedup.DedupPartition(cfg.dedup)))
    decisions.append(found | "ExactDecisions" >> beam.FlatMap(_only, "exact"))
  if cfg.dedup.near:
    near, unconverged = (found | "NearEdges" >> beam.FlatMap(_only, "edge")
                         | "Near" >> dedup.NearDecisions(cfg.dedup.cc_rounds))
    decisions.append(near)
    stats.append(unconverged | "UnconvergedStats" >> beam.Map(
        lambda n: {"near_dedup/cc_unconverged": n}))
  if not decisions:
    decisions.append(out | "NoDecisions" >> beam.FlatMap(lambda _: ()))
  by_shard = lambda kv: (shard_of(kv[0], num_shards), kv)
  written = ({"spill": out | "SpillFiles" >> beam.FlatMap(_only, "spill"),
              "decision": (decisions | "AllDecisions" >> beam.Flatten()
                           | "DecisionShard" >> beam.Map(by_shard))}
             | "ByShard" >> beam.CoGroupByKey()
             | "Write" >> beam.ParDo(WriteShard(cfg, tmp_dir, num_shards)))
  stats.append(written)
  _ = (stats | "AllStats" >> beam.Flatten()
       | "SumStats" >> beam.CombineGlobally(SumCounters()).without_defaults()
       | "WriteStats" >> beam.Map(write_json, f"{tmp_dir}/{STATS_FILE}"))


def auto_num_shards(files, unit: int = SHARD_BYTES) -> int:
  """One per `unit` bytes of input files (at least one)."""
  return max(1, math.ceil(sum(size for *_, size in files) / unit))
