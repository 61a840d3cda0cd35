"""lm-prep end to end on corpora built here: dedup quality, determinism,
bad inputs, the report, and the SeqIO task over the output."""

import dataclasses
import gzip
import json
import os

import pytest

from lm.cli import prep as cli
from lm.data.prep import driver, readers, synthetic
from lm.data.prep.config import PrepConfig, ReadConfig


def read_dir(out):
  """({id: record} kept, {id: reason} removed), checking ids are unique."""
  kept, removed = {}, {}
  for name in sorted(os.listdir(out)):
    if name.startswith("data-"):
      with gzip.open(os.path.join(out, name), "rt") as f:
        for line in f:
          r = json.loads(line)
          assert r["id"] not in kept
          kept[r["id"]] = r
  for name in sorted(os.listdir(os.path.join(out, "removed"))):
    with gzip.open(os.path.join(out, "removed", name), "rt") as f:
      for line in f:
        r = json.loads(line)
        assert r["id"] not in removed
        removed[r["id"]] = r["reason"]
  return kept, removed


def file_bytes(out):
  return {os.path.join(d, n): open(os.path.join(out, d, n), "rb").read()
          for d in ("", "removed") for n in os.listdir(os.path.join(out, d))
          if n.endswith(".gz")}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
  """2,300 documents of 100-150 words with planted duplicates in 4 .jsonl.gz
  files, run 3 times."""
  root = tmp_path_factory.mktemp("planted")
  corpus = synthetic.make_corpus(2000, 100, 200, seed=1, words=(100, 150))
  synthetic.write_jsonl(corpus.docs, str(root / "in"), 4)
  cfg = PrepConfig(inputs=(str(root / "in" / "*.jsonl.gz"),),
                   output_dir=str(root / "a"), num_shards=3)
  report = driver.run(cfg, num_workers=1)
  driver.run(dataclasses.replace(cfg, output_dir=str(root / "b")))
  # Two workers sharing each file as ~20 ranges.
  driver.run(dataclasses.replace(cfg, output_dir=str(root / "c"),
                                 read=ReadConfig(range_bytes=20_000)),
             num_workers=2)
  return corpus, report, root


def test_near_duplicates_precision_and_recall(planted):
  corpus, _, root = planted
  _, removed = read_dir(root / "a")
  flagged = {i for i, r in removed.items() if r.startswith("near_dup_of:")}
  recall = len(flagged & set(corpus.near_of)) / len(corpus.near_of)
  precision = len(flagged & set(corpus.near_of)) / len(flagged)
  assert recall >= 0.95 and precision >= 0.95, (recall, precision)
  for doc_id in flagged & set(corpus.near_of):
    assert removed[doc_id] == f"near_dup_of:{corpus.near_of[doc_id]}"


def test_exact_duplicates_all_found(planted):
  corpus, _, root = planted
  _, removed = read_dir(root / "a")
  assert {i: removed.get(i) for i in corpus.exact_of} == {
      i: f"exact_dup_of:{o}" for i, o in corpus.exact_of.items()}


def test_every_document_kept_or_removed_exactly_once(planted):
  corpus, report, root = planted
  kept, removed = read_dir(root / "a")
  assert not set(kept) & set(removed)
  assert set(kept) | set(removed) == {i for i, _ in corpus.docs}
  assert report["output"]["docs"] == len(kept)
  assert sum(report["removals"].values()) == len(removed)
  stages = {s["stage"]: s for s in report["stages"]}
  assert stages["read"]["docs_in"] == len(corpus.docs)
  assert stages["near_dedup"]["docs_out"] == len(kept)
  assert report["near_dedup_unconverged"] == 0


def test_output_is_identical_across_runs_worker_counts_and_ranges(planted):
  _, _, root = planted
  files = readers.expand_inputs([str(root / "in" / "*.jsonl.gz")])
  assert len(files) == 4 and len(readers.plan_ranges(files, 20_000)) > 40
  a = file_bytes(root / "a")
  assert len(a) == 6  # 3 shards of kept + 3 of removed documents.
  assert a == file_bytes(root / "b")
  assert a == file_bytes(root / "c")


def test_report_files(planted):
  _, report, root = planted
  for name in ("report.json", "report.md", "length_histogram.png",
               "removals.png"):
    assert os.path.getsize(root / "a" / name) > 0
  md = (root / "a" / "report.md").read_text()
  assert "| near_dedup | 2,200 |" in md
  before = report["audit"]["before"]
  assert before["docs"] == 2300 and before["attributes"]["male"] > 0
  assert sum(report["length_histogram"]["after"]) == report["output"]["docs"]


def test_bad_inputs_are_recorded_not_fatal(tmp_path):
  d = tmp_path / "in"
  d.mkdir()
  good = synthetic.make_corpus(3, 0, 0, seed=2).docs
  (d / "bad.txt").write_bytes(good[0][1].encode() + b"\xff\xfe")
  (d / "empty.txt").write_bytes(b"")
  (d / "empty.jsonl").write_bytes(b"")
  huge = " ".join(["word"] * 2_000_000)  # One 10 MB line.
  (d / "docs.jsonl").write_text("\n".join(
      json.dumps({"id": i, "text": t}) for i, t in good[1:] + [("huge", huge)]
  ) + "\n{broken json\n")
  report = driver.run(PrepConfig(inputs=(f"{d}/*",), output_dir=str(
      tmp_path / "out")))
  kept, removed = read_dir(tmp_path / "out")
  assert sorted(kept) == sorted(i for i, _ in good[1:])
  assert removed == {f"{d}/bad.txt#0": "decode_error",
                     f"{d}/empty.txt#0": "empty",
                     "huge": "quality:word_count",
                     f"{d}/docs.jsonl#3": "parse_error"}
  assert report["removals"]["decode_error"] == 1


def _cli(capsys, *args):
  code = cli.main(list(args))
  err = capsys.readouterr().err.strip().splitlines()
  return code, err


def test_cli_user_errors_give_one_line_and_no_output(tmp_path, capsys):
  code, err = _cli(capsys, "--input", f"{tmp_path}/nothing/*.jsonl",
                   "--output_dir", f"{tmp_path}/out")
  assert code == 2 and err[-1].startswith("lm-prep: error: no file matches")
  (tmp_path / "a.txt").write_text("some text")
  (tmp_path / "file").write_text("")
  code, err = _cli(capsys, "--input", f"{tmp_path}/a.txt",
                   "--output_dir", f"{tmp_path}/file/out")
  assert code == 2 and err[-1].startswith("lm-prep: error: cannot create")
  (tmp_path / "exists").mkdir()
  code, err = _cli(capsys, "--input", f"{tmp_path}/a.txt",
                   "--output_dir", f"{tmp_path}/exists")
  assert code == 2 and "already exists" in err[-1]
  assert sorted(os.listdir(tmp_path)) == ["a.txt", "exists", "file"]


def test_failure_midway_leaves_no_directory(tmp_path, monkeypatch):
  from lm.data.prep import pipeline

  def explode(self, item):
    raise RuntimeError("disk on fire")
    yield

  monkeypatch.setattr(pipeline.WriteShard, "process", explode)
  (tmp_path / "a.txt").write_text("some text")
  with pytest.raises(Exception, match="disk on fire"):
    driver.run(PrepConfig(inputs=(f"{tmp_path}/a.txt",),
                          output_dir=str(tmp_path / "out")))
  assert os.listdir(tmp_path) == ["a.txt"]


def test_no_grouping_holds_a_record_per_document(tmp_path):
  """Flat memory: what a local runner keeps for a Beam grouping is spill
  paths and a few records per duplicate, never one record per document
  (before: a hash and 20 LSH band keys per document). Combiners are lifted
  (summed within the bundle) and are not counted."""
  import apache_beam as beam
  from apache_beam.metrics import monitoring_infos
  from apache_beam.runners.portability.fn_api_runner import FnApiRunner
  from lm.data.prep import pipeline

  corpus = synthetic.make_corpus(400, 10, 10, seed=4, words=(60, 100))
  synthetic.write_jsonl(corpus.docs, str(tmp_path / "in"), 2)
  cfg = PrepConfig(inputs=(str(tmp_path / "in" / "*.jsonl.gz"),),
                   output_dir=str(tmp_path / "out"))
  files = readers.expand_inputs(cfg.inputs)
  tmp = driver._make_temp_dir(cfg.output_dir, overwrite=False)
  p = beam.Pipeline(runner=FnApiRunner())
  pipeline.build(p, cfg, readers.plan_ranges(files, 1 << 20), tmp, 2, 4)
  result = p.run()
  counts = {i.labels[monitoring_infos.PCOLLECTION_LABEL]:
            monitoring_infos.extract_counter_value(i)
            for i in result.monitoring_infos()
            if i.urn == monitoring_infos.ELEMENT_COUNT_URN}
  components = p.to_runner_api().components
  grouped = {t.unique_name: counts[pc]
             for t in components.transforms.values()
             if t.spec.urn == "beam:transform:group_by_key:v1"
             and "CombinePerKey" not in t.unique_name
             for pc in t.inputs.values()}
  assert {"ByPartition", "ByShard/CoGroupByKeyImpl/GroupByKey",
          "Near/Components/Group0"} <= set(grouped)
  assert grouped["ByPartition"] <= 2 * 4  # Files x partitions.
  # Edges (both directions, repeated across partitions) of the 20 planted
  # duplicates: a few per duplicate, far fewer than one per document.
  dups = len(corpus.exact_of) + len(corpus.near_of)
  assert 0 < max(grouped.values()) <= 10 * dups < len(corpus.docs) / 2, grouped
  assert counts[components.transforms[next(
      t for t, v in components.transforms.items()
      if v.unique_name == "Read")].outputs["None"]] == len(corpus.docs)
