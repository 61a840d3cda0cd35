"""lm-prep's command line: --text_key, and user errors caught before Beam runs (issue 8 items 4,
14, 21)."""

import gzip
import json
import os
import random
import re

import pytest

from lm.cli import prep as cli
from lm.data.prep import synthetic


def _read(path):
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_text_key_publishes_the_processed_text(tmp_path):
  rng = random.Random(0)
  vocab = synthetic._vocabulary(rng, 500)
  good = [synthetic.make_document(rng, vocab, 120, boilerplate=False) for _ in range(3)]
  records = [{"id": f"d{i}", "text": f"RAW TEXT {i}", "url": f"u{i}",
              "body": text + f"\nWrite to someone{i}@example.com today."}
             for i, text in enumerate(good)]
  records.append({"id": "short", "text": good[0], "body": "Too short to keep."})
  (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  out = tmp_path / "out"
  assert cli.main(["--input", str(tmp_path / "in.jsonl"), "--output_dir", str(out),
                   "--text_key", "body", "--num_workers", "1", "--num_shards", "1"]) == 0
  kept = _read(out / "data-00000-of-00001.jsonl.gz")
  assert sorted(r["id"] for r in kept) == ["d0", "d1", "d2"]  # the quality filter applied
  for r in kept:
    i = int(r["id"][1:])
    assert "RAW TEXT" not in r["text"] and "@example.com" not in r["text"]
    assert r["text"].endswith("Write to <EMAIL> today.") and r["url"] == f"u{i}"
  removed = _read(out / "removed" / "removed-00000-of-00001.jsonl.gz")
  assert [(r["id"], r["reason"].split(":")[0]) for r in removed] == [("short", "quality")]


@pytest.mark.parametrize("flags,message", [
    (["--decontaminate", "{tmp}/missing_eval.txt"], "--decontaminate .*missing_eval.txt"),
    (["--audit_terms", "{tmp}/missing_terms.json"], "--audit_terms .*missing_terms.json"),
    (["--audit_terms", "{tmp}/bad.json"], "--audit_terms .*bad.json"),
    (["--near_rows", "0"], "--near_rows"),
    (["--near_bands", "0"], "--near_bands"),
    (["--range_bytes", "0"], "--range_bytes must be >= 1"),
])
def test_bad_side_files_and_lsh_settings_fail_before_running(tmp_path, capsys, flags, message):
  (tmp_path / "in.txt").write_text("some text")
  (tmp_path / "bad.json").write_text("{not json")
  flags = [f.format(tmp=tmp_path) for f in flags]
  code = cli.main(["--input", str(tmp_path / "in.txt"), "--output_dir", str(tmp_path / "out"),
                   "--num_workers", "1"] + flags)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("lm-prep: error: ")
  assert re.search(message, err[0]), err
  assert sorted(os.listdir(tmp_path)) == ["bad.json", "in.txt"]  # nothing half-made


def test_help_and_config_agree_on_the_shard_size():
  from lm.data.prep import pipeline
  assert pipeline.SHARD_BYTES == 16 << 20
  assert "one per 16 MB of input" in cli._parser().format_help()
