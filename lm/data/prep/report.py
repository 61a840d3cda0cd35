"""report.json, report.md and its PNG plots, from the summed pipeline stats."""

import io
import json
from typing import Dict

from apache_beam.io.filesystems import FileSystems

from lm.data.prep import audit
from lm.data.prep.config import PrepConfig

STAGES = ("read", "normalize", "clean", "language", "quality", "pii",
          "decontaminate", "exact_dedup", "near_dedup")
_FIELDS = ("docs", "chars", "words")


def _prefixed(stats, prefix: str) -> Dict[str, float]:
  return {k[len(prefix) + 1:]: v for k, v in sorted(stats.items())
          if k.startswith(prefix + "/")}


def build_report(stats: dict, cfg: PrepConfig, files, wall_seconds: float,
                 num_shards: int) -> dict:
  """The report.json content."""
  stages = []
  for stage in STAGES:
    if f"{stage}/docs_in" not in stats:
      continue
    row = {"stage": stage}
    for side in ("in", "out"):
      row.update({f"{f}_{side}": int(stats.get(f"{stage}/{f}_{side}", 0))
                  for f in _FIELDS})
    row["removed"] = row["docs_in"] - row["docs_out"]
    row["cpu_seconds"] = round(stats.get(f"{stage}/seconds", 0.0), 3)
    stages.append(row)
  terms = audit.load_terms(cfg.audit_terms)
  bins = max([int(k.split("/")[1]) for k in stats
              if k.startswith("hist_")] + [0]) + 1
  splits = {s: {"docs": int(stats.get(f"split/{s}/docs", 0))}
            for s in ("train", "validation")}
  for s in splits:
    if f"tokens/{s}" in stats:
      splits[s]["spm_tokens"] = int(stats[f"tokens/{s}"])
  return {
      "inputs": {"files": len(files),
                 "bytes": int(sum(size for *_, size in files))},
      "output": {"shards": num_shards, "splits": splits,
                 **{f: int(stats.get(f"output/{f}_out", 0))
                    for f in _FIELDS}},
      "stages": stages,
      "removals": {k: int(v) for k, v in _prefixed(stats, "removed").items()},
      "pii_replaced": {k: int(v) for k, v in _prefixed(stats, "pii_replaced").items()},
      "clean_lines": {k: int(v) for k, v in
                      _prefixed(stats, "clean_lines").items()},
      "near_dedup_unconverged": int(stats.get("near_dedup/cc_unconverged", 0)),
      "length_histogram": {
          "bin_upper_chars": [2**i for i in range(bins)],
          "before": [int(stats.get(f"hist_before/{i}", 0)) for i in range(bins)],
          "after": [int(stats.get(f"hist_after/{i}", 0)) for i in range(bins)],
      },
      "audit": {side: audit.summarize(stats, terms, f"audit_{side}")
                for side in ("before", "after")},
      "wall_seconds": round(wall_seconds, 2),
      "config": cfg.to_dict(),
  }


def _put(path: str, data: bytes) -> None:
  with FileSystems.create(path, compression_type="uncompressed") as f:
    f.write(data)


def _png(fig) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  return buf.getvalue()


def _plots(report: dict, out_dir: str) -> None:
  import matplotlib
  matplotlib.use("Agg")  # No display; must precede pyplot.
  import matplotlib.pyplot as plt
  hist = report["length_histogram"]
  fig, ax = plt.subplots(figsize=(7, 3.5))
  x = range(len(hist["before"]))
  ax.bar([i - 0.2 for i in x], hist["before"], width=0.4, label="before")
  ax.bar([i + 0.2 for i in x], hist["after"], width=0.4, label="after")
  ax.set_xticks(list(x), [f"<{b}" for b in hist["bin_upper_chars"]],
                rotation=90, fontsize=7)
  ax.set_xlabel("document length (characters)")
  ax.set_ylabel("documents")
  ax.legend()
  fig.tight_layout()
  _put(f"{out_dir}/length_histogram.png", _png(fig))
  plt.close(fig)
  removals = report["removals"] or {"(none)": 0}
  fig, ax = plt.subplots(figsize=(7, 0.35 * len(removals) + 1.2))
  ax.barh(list(removals), list(removals.values()))
  ax.set_xlabel("documents removed")
  fig.tight_layout()
  _put(f"{out_dir}/removals.png", _png(fig))
  plt.close(fig)


def _markdown(report: dict) -> str:
  lines = ["# lm-prep report", "",
           f"Input: {report['inputs']['files']} files, "
           f"{report['inputs']['bytes']:,} bytes. Output: "
           f"{report['output']['docs']:,} documents, "
           f"{report['output']['chars']:,} characters, "
           f"{report['output']['words']:,} words in "
           f"{report['output']['shards']} shards "
           f"({report['wall_seconds']} s).", "",
           "## Stages", "",
           "| stage | docs in | docs out | removed | chars in | chars out "
           "| words in | words out | CPU s |", "|---" * 9 + "|"]
  for s in report["stages"]:
    lines.append(
        f"| {s['stage']} | {s['docs_in']:,} | {s['docs_out']:,} | "
        f"{s['removed']:,} | {s['chars_in']:,} | {s['chars_out']:,} | "
        f"{s['words_in']:,} | {s['words_out']:,} | {s['cpu_seconds']} |")
  lines += ["", "## Splits", "", "| split | docs | SentencePiece tokens |",
            "|---|---|---|"]
  for name, s in report["output"]["splits"].items():
    lines.append(f"| {name} | {s['docs']:,} | {s.get('spm_tokens', '-')} |")
  lines += ["", "## Removals", "", "![removals](removals.png)", "",
            "| reason | documents |", "|---|---|"]
  lines += [f"| {k} | {v:,} |" for k, v in report["removals"].items()]
  lines += ["", "## PII replaced", "", "| kind | count |", "|---|---|"]
  lines += [f"| {k} | {v:,} |" for k, v in report["pii_replaced"].items()]
  lines += ["", "## Document lengths", "",
            "![length histogram](length_histogram.png)", ""]
  lines += _audit_markdown(report["audit"])
  return "\n".join(lines) + "\n"


def _audit_markdown(aud: dict) -> list:
  before, after = aud["before"], aud["after"]
  attrs = list(before["attributes"])
  lines = ["## Data audit", "",
           "Documents mentioning each term group, and for each target the "
           "documents where it co-occurs with each attribute "
           "(before -> after cleaning).", "",
           "| target | docs | " + " | ".join(attrs) + " |",
           "|---" * (2 + len(attrs)) + "|"]
  for t, row in before["targets"].items():
    new = after["targets"][t]
    lines.append(f"| {t} | {row['docs']} -> {new['docs']} | " + " | ".join(
        f"{row[a]} -> {new[a]}" for a in attrs) + " |")
  lines += ["", "| group or attribute | docs before | docs after |",
            "|---|---|---|"]
  for kind in ("attributes", "groups"):
    lines += [f"| {g} | {n} | {after[kind][g]} |"
              for g, n in before[kind].items()]
  return lines


def write_report(report: dict, out_dir: str) -> None:
  """Writes the plots, report.md and (last) report.json into `out_dir`."""
  _plots(report, out_dir)
  _put(f"{out_dir}/report.md", _markdown(report).encode("utf-8"))
  _put(f"{out_dir}/report.json", json.dumps(report, indent=1).encode("utf-8"))
