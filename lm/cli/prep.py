"""`lm-prep`: clean, filter, deduplicate and tokenize a raw text corpus.

Example:
  lm-prep --input 'corpus/*.jsonl.gz' --output_dir /data/prepared \
      --spm_vocab_size 8000 --num_workers 2

Arguments this parser does not know are passed to Apache Beam, so the same
command runs on Dataflow, Flink or Spark with e.g. `--runner=DataflowRunner
--project=... --region=... --temp_location=gs://... --setup_file=./setup.py`.
"""

import argparse
import dataclasses
import logging
import os
import sys
from typing import List, Optional

from lm.data.prep import config as C


def _parser() -> argparse.ArgumentParser:
  d = C.PrepConfig(inputs=(), output_dir="")
  q, dd = d.quality, d.dedup
  p = argparse.ArgumentParser(
      prog="lm-prep", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--input", action="append", required=True,
                 help="glob of .txt/.jsonl/.jsonl.gz files (repeatable)")
  p.add_argument("--output_dir", required=True)
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1,
                 help="local DirectRunner processes (ignored with --runner)")
  p.add_argument("--num_shards", type=int, default=0,
                 help="output shards; 0: one per 16 MB of input files")
  g = p.add_argument_group("read")
  g.add_argument("--text_key", default=d.read.text_key)
  g.add_argument("--split", choices=("file", "paragraphs"),
                 default=d.read.split, help=".txt: documents per file/block")
  g.add_argument("--on_decode_error", choices=("drop", "replace"),
                 default=d.read.on_decode_error)
  g.add_argument("--range_bytes", type=int, default=d.read.range_bytes,
                 help=".jsonl(.gz), .txt with --split=paragraphs: workers "
                 "share a file in ranges of this many decompressed bytes")
  g = p.add_argument_group("stages (each can be switched off)")
  g.add_argument("--no_normalize", action="store_true")
  g.add_argument("--no_fix_mojibake", action="store_true")
  g.add_argument("--html_to_text", action="store_true")
  g.add_argument("--clean_lines", action="store_true",
                 help="C4 boilerplate line cleaning (TFDS c4_utils)")
  g.add_argument("--no_quality", action="store_true")
  g.add_argument("--languages", default="",
                 help="comma-separated ISO codes to keep, e.g. en (py3langid)")
  g.add_argument("--no_pii", action="store_true")
  g.add_argument("--no_exact_dedup", action="store_true")
  g.add_argument("--no_near_dedup", action="store_true")
  g.add_argument("--decontaminate", action="append", default=[],
                 help="evaluation file; drop docs sharing a 13-gram with it")
  g = p.add_argument_group("quality thresholds (Gopher defaults)")
  for field in dataclasses.fields(C.QualityConfig):
    value = getattr(q, field.name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      g.add_argument(f"--quality_{field.name}", type=type(value), default=value)
  g = p.add_argument_group("near dedup")
  for name in ("ngram", "bands", "rows", "threshold", "cc_rounds"):
    g.add_argument(f"--near_{name}", type=type(getattr(dd, name)),
                   default=getattr(dd, name))
  g = p.add_argument_group("report and tokenizer")
  g.add_argument("--audit_terms", help="JSON term lists (see audit.py)")
  g.add_argument("--spm_vocab_size", type=int, default=0)
  g.add_argument("--spm_sample_chars", type=int, default=d.spm_sample_chars)
  g.add_argument("--validation_fraction", type=float,
                 default=d.validation_fraction)
  return p


def config_from_args(a: argparse.Namespace) -> C.PrepConfig:
  """Builds the PrepConfig from parsed flags."""
  quality = {f.name: getattr(a, f"quality_{f.name}")
             for f in dataclasses.fields(C.QualityConfig)
             if hasattr(a, f"quality_{f.name}")}
  return C.PrepConfig(
      inputs=tuple(a.input), output_dir=a.output_dir, overwrite=a.overwrite,
      num_shards=a.num_shards,
      read=C.ReadConfig(a.text_key, a.split, a.on_decode_error,
                        a.range_bytes),
      normalize=C.NormalizeConfig(enabled=not a.no_normalize,
                                  fix_mojibake=not a.no_fix_mojibake,
                                  html_to_text=a.html_to_text),
      clean=C.CleanConfig(enabled=a.clean_lines),
      quality=C.QualityConfig(
          enabled=not a.no_quality, **quality,
          languages=tuple(l for l in a.languages.split(",") if l)),
      pii=C.PiiConfig(enabled=not a.no_pii),
      dedup=C.DedupConfig(
          exact=not a.no_exact_dedup, near=not a.no_near_dedup,
          ngram=a.near_ngram, bands=a.near_bands, rows=a.near_rows,
          threshold=a.near_threshold, cc_rounds=a.near_cc_rounds),
      decontaminate=tuple(a.decontaminate), audit_terms=a.audit_terms,
      spm_vocab_size=a.spm_vocab_size, spm_sample_chars=a.spm_sample_chars,
      validation_fraction=a.validation_fraction)


def main(argv: Optional[List[str]] = None) -> int:
  """Entry point; user errors print one line on stderr and exit 2."""
  args, beam_args = _parser().parse_known_args(argv)
  logging.getLogger("apache_beam").setLevel(logging.WARNING)
  from lm.data.prep import driver  # Beam import: after --help.
  from lm.errors import UserError
  try:
    rep = driver.run(config_from_args(args), beam_args, args.num_workers)
  except UserError as e:
    print(f"lm-prep: error: {e}", file=sys.stderr)
    return 2
  out = rep["output"]
  print(f"lm-prep: kept {out['docs']:,} of {rep['stages'][0]['docs_in']:,} "
        f"documents ({out['chars']:,} chars) in {args.output_dir} "
        f"[{rep['wall_seconds']} s]; see report.md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
