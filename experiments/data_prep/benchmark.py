"""lm-prep benchmark: throughput per stage, peak memory, near-dup quality,
and HF datatrove side by side on the same synthetic corpus.

  python experiments/data_prep/benchmark.py [--sizes_mb 50,200] [--workers 1,2]
      [--dask_workers 2] [--datatrove_python /work/venv-dt/bin/python]
      (or $DATATROVE_PYTHON)

The corpus: distinct documents of 400-800 words sharing boilerplate lines,
plus 2 % exact copies and 5 % near copies (3 % of words replaced, two lines
swapped). Stage rates are per CPU-second summed over workers; totals are wall
clock. Peak memory is the summed RSS of the whole process tree (for Dask:
lm-prep's tree plus the local cluster's worker processes; the scheduler runs
in this process and is not counted). With 1 worker, the peak RSS of the
largest corpus over the smallest's is printed (lm-prep's target: <= 1.2).
The Dask row runs the smallest corpus on Beam's DaskRunner against a local
dask.distributed cluster of --dask_workers processes.
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from lm.data.prep import synthetic


def build_corpus(work, size_mb, seed):
  """Writes (once) a corpus of about size_mb MB; returns (dir, truth)."""
  out = os.path.join(work, f"corpus-{size_mb}mb")
  truth_path = out + ".truth.json"
  if not os.path.exists(truth_path):
    distinct = int(size_mb * 1e6 / 4700 / 1.07)
    corpus = synthetic.make_corpus(
        distinct, distinct // 50, distinct // 20, seed=seed, words=(400, 800),
        edit_range=(0.03, 0.03), shuffle_all_prob=0.0)
    synthetic.write_jsonl(corpus.docs, out, 8)
    with open(truth_path, "w") as f:
      json.dump({"exact_of": corpus.exact_of, "near_of": corpus.near_of,
                 "ids": [i for i, _ in corpus.docs]}, f)
  with open(truth_path) as f:
    return out, json.load(f)


def run_measured(cmd, env=None, also=()):
  """Runs cmd; returns (seconds, peak summed RSS in MB of its tree and of the
  `also` processes, stdout)."""
  start, peak = time.time(), [0]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)
  parent = psutil.Process(proc.pid)

  def sample():
    while proc.poll() is None:
      try:
        procs = [parent] + parent.children(recursive=True) + list(also)
        peak[0] = max(peak[0], sum(p.memory_info().rss for p in procs))
      except psutil.Error:
        pass
      time.sleep(0.2)

  thread = threading.Thread(target=sample)
  thread.start()
  out, err = proc.communicate()
  thread.join()
  if proc.returncode:
    raise RuntimeError(f"{cmd} failed:\n{err[-3000:]}")
  return time.time() - start, peak[0] / 2**20, out


def kept_and_removed(out_dir):
  kept, removed = set(), {}
  for name in os.listdir(out_dir):
    if name.startswith("data-"):
      with gzip.open(os.path.join(out_dir, name), "rt") as f:
        kept.update(json.loads(l)["id"] for l in f)
  for name in os.listdir(os.path.join(out_dir, "removed")):
    with gzip.open(os.path.join(out_dir, "removed", name), "rt") as f:
      for line in f:
        r = json.loads(line)
        removed[r["id"]] = r["reason"]
  return kept, removed


def dup_quality(kept, truth):
  """(near recall, near precision, exact recall) judged by kept ids."""
  near, exact = set(truth["near_of"]), set(truth["exact_of"])
  dropped = set(truth["ids"]) - kept
  caught = len(near & dropped)
  wrongly = len(dropped - near - exact)
  return (caught / len(near), caught / max(caught + wrongly, 1),
          len(exact & dropped) / len(exact))


def run_lm_prep(corpus, out, workers, extra=(), also=()):
  cmd = [sys.executable, "-m", "lm.cli.prep", "--input",
         f"{corpus}/*.jsonl.gz", "--output_dir", out, "--overwrite",
         "--num_workers", str(workers), *extra]
  seconds, peak, _ = run_measured(cmd, also=also)
  with open(os.path.join(out, "report.json")) as f:
    return seconds, peak, json.load(f)


def run_lm_prep_dask(corpus, out, workers):
  """lm-prep on Beam's DaskRunner against a local cluster started here."""
  import distributed
  with distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                processes=True, dashboard_address=None
                                ) as cluster:
    procs = psutil.Process().children(recursive=True)
    return run_lm_prep(corpus, out, workers, [
        "--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
        f"--dask_client_address={cluster.scheduler_address}"], also=procs)


def run_datatrove(python, corpus, work, workers):
  script = os.path.join(os.path.dirname(__file__), "datatrove_run.py")
  subprocess.run(["rm", "-rf", work], check=True)
  seconds, peak, out = run_measured([python, script, corpus, work,
                                     str(workers)])
  result = json.loads(out.strip().splitlines()[-1])
  with open(result["kept_ids"]) as f:
    return seconds, peak, set(json.load(f)), result["seconds"]


def threshold_curve(work):
  """Near-dup recall/precision vs the verification threshold (20 MB)."""
  corpus, truth = build_corpus(work, 20, seed=7)
  print("\nnear-dup threshold curve (20 MB planted corpus, default bands):")
  print("| threshold | recall | precision | near-dup removals |")
  print("|---|---|---|---|")
  for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
    out = os.path.join(work, "curve")
    run_lm_prep(corpus, out, 2, ["--near_threshold", str(t)])
    kept, removed = kept_and_removed(out)
    near = {i for i, r in removed.items() if r.startswith("near_dup_of")}
    hit = len(near & set(truth["near_of"]))
    print(f"| {t} | {hit / len(truth['near_of']):.4f} | "
          f"{hit / max(len(near), 1):.4f} | {len(near)} |")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes_mb", default="50,200")
  p.add_argument("--workers", default="1,2")
  p.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(),
                                                    "lm_prep_bench"))
  p.add_argument("--datatrove_python", default=os.environ.get(
      "DATATROVE_PYTHON", "/work/venv-dt/bin/python"))
  p.add_argument("--no_curve", action="store_true")
  p.add_argument("--dask_workers", type=int, default=2,
                 help="Dask row on the smallest corpus (0: none)")
  args = p.parse_args()
  have_dt = os.path.exists(args.datatrove_python)
  if not have_dt:
    print(f"datatrove: skipped ({args.datatrove_python} not found)")
  rows = []
  for size in map(int, args.sizes_mb.split(",")):
    corpus, truth = build_corpus(args.work_dir, size, seed=size)
    mb = sum(os.path.getsize(os.path.join(corpus, f))
             for f in os.listdir(corpus)) / 1e6
    runs = [("lm-prep", w) for w in map(int, args.workers.split(","))]
    if args.dask_workers and size == min(map(int, args.sizes_mb.split(","))):
      runs.append(("lm-prep on Dask", args.dask_workers))
    for tool, workers in runs:
      out = os.path.join(args.work_dir, f"out-{size}-{workers}" + (
          "-dask" if tool.endswith("Dask") else ""))
      run = run_lm_prep_dask if tool.endswith("Dask") else run_lm_prep
      load = os.getloadavg()[0]
      seconds, peak, rep = run(corpus, out, workers)
      kept, _ = kept_and_removed(out)
      text_mb = rep["stages"][0]["chars_in"] / 1e6
      docs = rep["stages"][0]["docs_in"]
      recall, precision, exact = dup_quality(kept, truth)
      load = max(load, os.getloadavg()[0])
      print(f"\n{tool}, {size} MB corpus ({text_mb:.0f} MB text, {docs:,} "
            f"docs, {mb:.0f} MB gzip), {workers} worker(s): {seconds:.1f} s, "
            f"{docs / seconds:,.0f} docs/s, {text_mb / seconds:.2f} MB/s, "
            f"peak RSS {peak:,.0f} MB; load average {load:.1f}")
      print("| stage | docs/CPU-s | MB/CPU-s |\n|---|---|---|")
      for s in rep["stages"]:
        if s["cpu_seconds"]:
          print(f"| {s['stage']} | {s['docs_in'] / s['cpu_seconds']:,.0f} | "
                f"{s['chars_in'] / 1e6 / s['cpu_seconds']:.2f} |")
      row = {"size": size, "workers": workers, "tool": tool,
             "seconds": seconds, "peak": peak, "docs": docs, "mb": text_mb,
             "recall": recall, "precision": precision, "exact": exact,
             "load": load}
      rows.append(row)
      if tool.endswith("Dask"):
        same = kept == kept_and_removed(
            os.path.join(args.work_dir, f"out-{size}-1"))[0]
        print(f"Dask kept the same ids as the local runner: {same}")
      if have_dt and tool == "lm-prep" and size == max(map(int, args.sizes_mb.split(","))):
        dt_s, dt_peak, dt_kept, dt_steps = run_datatrove(
            args.datatrove_python, corpus,
            os.path.join(args.work_dir, f"dt-{size}-{workers}"), workers)
        r, pr, ex = dup_quality(dt_kept, truth)
        rows.append({"size": size, "workers": workers, "tool": "datatrove",
                     "seconds": dt_s, "peak": dt_peak, "docs": docs,
                     "mb": text_mb, "recall": r, "precision": pr, "exact": ex,
                     "overlap": len(kept & dt_kept) / len(kept | dt_kept)})
        print("datatrove steps (s):", {k: round(v, 1)
                                       for k, v in dt_steps.items()})
  print("\n| tool | corpus (text) | workers | wall s | docs/s | MB/s | "
        "peak RSS MB | near recall | near precision | exact recall | "
        "kept-id overlap | load avg |")
  print("|---" * 12 + "|")
  for r in rows:
    print(f"| {r['tool']} | {r['mb']:.0f} MB | {r['workers']} | "
          f"{r['seconds']:.1f} | {r['docs'] / r['seconds']:,.0f} | "
          f"{r['mb'] / r['seconds']:.2f} | {r['peak']:,.0f} | "
          f"{r['recall']:.4f} | {r['precision']:.4f} | {r['exact']:.4f} | "
          f"{r.get('overlap', float('nan')):.4f} | "
          f"{r.get('load', float('nan')):.1f} |")
  single = [r for r in rows if r["tool"] == "lm-prep" and r["workers"] == 1]
  if len(single) > 1:
    small, large = single[0], single[-1]
    print(f"\npeak RSS, 1 worker: {large['mb'] / small['mb']:.1f}x the text "
          f"-> {large['peak'] / small['peak']:.2f}x the memory "
          f"({small['peak']:,.0f} -> {large['peak']:,.0f} MB)")
  if not args.no_curve:
    threshold_curve(args.work_dir)


if __name__ == "__main__":
  main()
