"""The Beam graph of `lm-prep`.

  files -> read -> ProcessDoc (decode .. decontaminate, per document)
             |-- docs -> spill files, one per (shard, bundle) -> (shard, path) -.
             |-- (hash, node)      -> ExactDedup -> decisions ---------------+-> by
             |-- (node, signature) -> NearDedup  -> decisions ---------------'  shard
             '-- stats -------------------------------------------> report  WriteShard

Only light records (hashes, signatures, ids, spill paths) go through Beam's
groupings; the text is spilled to DIR.tmp/_work, so neither a local runner's
memory nor a distributed shuffle holds the corpus. Each output shard (a hash
of the document key) is read back, joined with its dedup decisions and
sorted by input order before it is written, so the output is byte-identical
for any runner and worker count.
"""

import collections
import gzip
import hashlib
import json
import math
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from lm.data.prep import (audit, clean, decontam, minhash, normalize, pii,
                          quality, readers, splits)
from lm.data.prep.config import PrepConfig
from lm.data.prep.dedup import ExactDedup, NearDedup

# Auto sharding: one output shard per 16 MB of input (gzip: ~40 MB of text),
# which bounds the memory of the step that sorts and writes a shard.
SHARD_BYTES = 16 << 20
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


class ProcessDoc(beam.DoFn):
  """Runs the per-document stages; emits dedup keys and stats.

  The documents themselves are spilled to one temp file per output shard and
  bundle, and only (shard, path) is emitted, so no runner ever buffers or
  shuffles the corpus text.
  """

  def __init__(self, cfg: PrepConfig, tmp_dir: str, num_shards: int):
    self._cfg, self._tmp, self._num_shards = cfg, tmp_dir, num_shards

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
    self._spills = {}  # shard -> (path, writer)

  def finish_bundle(self):
    for shard, (path, writer) in sorted(self._spills.items()):
      writer.close()
      yield beam.pvalue.TaggedOutput("spill", WindowedValue(
          (shard, path), MIN_TIMESTAMP, [GlobalWindow()]))

  def _spill(self, doc):
    shard = shard_of(doc["key"], self._num_shards)
    if shard not in self._spills:
      # A retried bundle writes a new file; only committed paths are read.
      path = f"{self._tmp}/{WORK_DIR}/{shard:05d}-{uuid.uuid4().hex}.jsonl.gz"
      self._spills[shard] = path, _gzip_writer(path)
    self._spills[shard][1].write_record(doc)

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
      yield from self._dedup_keys(doc, text, stats)
    else:
      stats[f"removed/{doc['reason']}"] += 1
    doc["text"], doc["words"] = text, words
    self._spill(doc)
    yield beam.pvalue.TaggedOutput("stats", stats)

  def _dedup_keys(self, doc, text, stats):
    node, dedup = (doc["key"], doc["id"]), self._cfg.dedup
    if dedup.exact:
      start = time.perf_counter()
      digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
      stats["exact_dedup/seconds"] += time.perf_counter() - start
      yield beam.pvalue.TaggedOutput("hash", (digest, node))
    if dedup.near:
      start = time.perf_counter()
      sig = minhash.signature(text, dedup.ngram, dedup.num_perm, dedup.seed)
      stats["near_dedup/seconds"] += time.perf_counter() - start
      yield beam.pvalue.TaggedOutput("sig", (node, sig.tobytes()))


def _prefixed(prefix, reason):
  return reason and f"{prefix}:{reason}"


def _gzip_writer(path: str):
  """A text writer to `path` (any Beam filesystem), gzip with a fixed mtime
  so that identical content gives identical bytes."""
  raw = FileSystems.create(path, compression_type="uncompressed")
  return _ClosingGzip(raw)


class _ClosingGzip(gzip.GzipFile):
  """GzipFile that also closes the channel it writes to."""

  def __init__(self, raw):
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
    docs = []
    for path in joined["spill"]:
      with FileSystems.open(path, compression_type="uncompressed") as raw:
        with gzip.GzipFile(fileobj=raw) as f:
          docs.extend(json.loads(line) for line in f)
    for doc in docs:
      doc["key"] = tuple(doc["key"])  # JSON turned the tuple into a list.
    decisions = {}
    for key, decision in joined["decision"]:
      # A document can be both; the exact duplicate is the better reason.
      if key not in decisions or decision[0] == "exact_dup_of":
        decisions[key] = decision
    stats = collections.Counter()
    name = f"{shard:05d}-of-{self._num_shards:05d}.jsonl.gz"
    with _gzip_writer(f"{self._tmp}/data-{name}") as kept, _gzip_writer(
        f"{self._tmp}/removed/removed-{name}") as removed:
      for doc in sorted(docs, key=lambda d: d["key"]):
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


def build(p: beam.Pipeline, cfg: PrepConfig, files, tmp_dir: str,
          num_shards: int) -> None:
  """Adds the whole prep graph to `p`; stats land in tmp_dir/_stats.json."""
  docs = (p | "Files" >> beam.Create(files)
          | "SpreadFiles" >> beam.Reshuffle()
          | "Read" >> beam.FlatMap(readers.read_file, cfg.read)
          | "Process" >> beam.ParDo(ProcessDoc(
              cfg, tmp_dir, num_shards)).with_outputs(
                  "hash", "sig", "stats", "spill", main="unused"))
  decisions, stats = [], [docs.stats]
  if cfg.dedup.exact:
    decisions.append(docs.hash | "Exact" >> ExactDedup())
  if cfg.dedup.near:
    near, unconverged = docs.sig | "Near" >> NearDedup(cfg.dedup)
    decisions.append(near)
    stats.append(unconverged | "UnconvergedStats" >> beam.Map(
        lambda n: {"near_dedup/cc_unconverged": n}))
  decision = (decisions | "AllDecisions" >> beam.Flatten()
              if decisions else p | "NoDecisions" >> beam.Create([]))
  by_shard = lambda kv: (shard_of(kv[0], num_shards), kv)
  written = ({"spill": docs.spill,
              "decision": decision | "DecisionShard" >> beam.Map(by_shard)}
             | "ByShard" >> beam.CoGroupByKey()
             | "Write" >> beam.ParDo(WriteShard(cfg, tmp_dir, num_shards)))
  stats.append(written)
  _ = (stats | "AllStats" >> beam.Flatten()
       | "SumStats" >> beam.CombineGlobally(SumCounters())
       | "WriteStats" >> beam.Map(write_json, f"{tmp_dir}/{STATS_FILE}"))


def auto_num_shards(files) -> int:
  return max(1, math.ceil(sum(size for *_, size in files) / SHARD_BYTES))
