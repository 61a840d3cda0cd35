"""Reproduces nanoGPT's CPU shakespeare_char run with lm and prints a Markdown table.

  python experiments/shakespeare_char/run.py [--seeds 0 1 2] [--torch_peer PATH | --no_peer]

Trains `gin_configs/runs/shakespeare_char_cpu.gin` (4 layers, 4 heads, d=128, ctx 64, batch 12,
2000 steps) once per seed with `lm.cli.train` and reports validation loss at steps 1000 and 2000,
steady-state ms/step and tokens/s (median over the 50-step logging windows after step 100,
evals excluded) and the wall time of the whole process (start-up, compilation, evals, checkpoints).

When a PyTorch reference script is given (`--torch_peer`, or the TORCH_PEER environment
variable; by default ../shared/peers/torch_char_gpt.py next to the repository, if present) it
is run on the same machine, alternating with lm seed by seed, and the table adds its rows and
the lm/peer ratios. Without one the peer rows are skipped and the table says so.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIN = os.path.join(ROOT, "gin_configs/runs/shakespeare_char_cpu.gin")
CORPUS = os.path.join(ROOT, "lm/data/assets/tinyshakespeare.txt")
DEFAULT_PEER = os.path.join(os.path.dirname(ROOT), "shared/peers/torch_char_gpt.py")
TOKENS_PER_STEP = 12 * 64
NANOGPT = "nanoGPT (published on this machine kind): val 2.05 at 1000, 1.8857 at 2000"


def run_lm(seed: int, steps: int, workdir: str) -> dict:
  model_dir = os.path.join(workdir, f"lm_seed{seed}")
  cmd = [sys.executable, "-m", "lm.cli.train", f"--gin_file={GIN}", f"--model_dir={model_dir}",
         f"--gin.SEED={seed}", f"--gin.TRAIN_STEPS={steps}",
         "--gin.sample_after_training.num_tokens=0"]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if proc.returncode:
    sys.exit(f"lm run failed (seed {seed}):\n{proc.stderr[-3000:]}")
  evals, windows = {}, []
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      if "eval/loss" in rec:
        evals[rec["step"]] = rec["eval/loss"]
      if "train/step_time_ms" in rec:
        windows.append(rec["train/step_time_ms"])
  # The first window holds the compilation; later ones are the steady state.
  return {"evals": evals, "ms": statistics.median(windows[2:] or windows[-1:]), "wall": wall,
          "full": full_split_loss(model_dir)}


def full_split_loss(model_dir: str, batch: int = 256) -> float:
  """Validation loss over every non-overlapping 64-token window of the validation split.

  The in-training eval (nanoGPT's: 20 batches of 12 random windows) has a standard error of a
  few hundredths; this one reads all ~1,740 windows once.
  """
  import numpy as np
  import lm
  from lm.data.tasks import shakespeare_char_vocabulary, shakespeare_text, split_text
  ids = np.array(shakespeare_char_vocabulary().encode(
      split_text(shakespeare_text(), 0.9)["validation"]), np.int32)
  n = (len(ids) - 1) // 64
  x, y = ids[:n * 64].reshape(n, 64), ids[1:n * 64 + 1].reshape(n, 64)
  model = lm.load(model_dir)
  total = 0.0
  for i in range(0, n, batch):
    rows = len(x[i:i + batch])  # pad the last batch: one compiled shape
    logits = np.asarray(model.logits(np.resize(x[i:i + batch], (batch, 64))))[:rows]
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    total -= np.take_along_axis(logp, y[i:i + batch][..., None], -1).sum()
  return float(total / (n * 64))


def run_peer(peer: str, seed: int, steps: int) -> dict:
  cmd = [sys.executable, peer, CORPUS, "--steps", str(steps), "--seed", str(1337 + seed)]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if proc.returncode:
    sys.exit(f"peer run failed (seed {seed}):\n{proc.stderr[-3000:]}")
  evals = {int(m.group(1)): float(m.group(2))
           for m in re.finditer(r"step (\d+): train \S+ val (\S+)", proc.stdout)}
  ms = float(re.search(r"ms_per_step_median (\S+)", proc.stdout).group(1))
  return {"evals": evals, "ms": ms, "wall": wall}


def _fmt(x, spec):
  return "-" if x is None else format(x, spec)


def row(name, r, steps):
  mid = steps // 2
  return (f"| {name} | {_fmt(r['evals'].get(mid), '.4f')} | {_fmt(r['evals'].get(steps), '.4f')} "
          f"| {_fmt(r.get('full'), '.4f')} | {r['ms']:.1f} | {TOKENS_PER_STEP / r['ms'] * 1e3:,.0f} "
          f"| {r['wall']:.0f} |")


def mean_of(results):
  keys = set.intersection(*(set(r["evals"]) for r in results))
  full = [r["full"] for r in results if "full" in r]
  return {"evals": {k: statistics.mean(r["evals"][k] for r in results) for k in keys},
          "full": statistics.mean(full) if full else None,
          "ms": statistics.mean(r["ms"] for r in results),
          "wall": statistics.mean(r["wall"] for r in results)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seeds", type=int, nargs="+", default=[0])
  p.add_argument("--steps", type=int, default=2000)
  p.add_argument("--torch_peer", default=os.environ.get("TORCH_PEER", DEFAULT_PEER))
  p.add_argument("--no_peer", action="store_true", help="run lm only")
  a = p.parse_args()
  peer = None if a.no_peer else a.torch_peer
  note = None
  if peer and not os.path.exists(peer):
    note, peer = f"PyTorch peer not found at {peer}: skipped (pass --torch_peer PATH).", None
  elif peer:
    try:
      import torch  # noqa: F401
    except ImportError:
      note, peer = "PyTorch is not installed: peer skipped.", None

  lm_runs, peer_runs = [], []
  with tempfile.TemporaryDirectory(prefix="shakespeare_char_") as workdir:
    for seed in a.seeds:  # alternate lm and peer so both see the same machine state
      lm_runs.append(run_lm(seed, a.steps, workdir))
      print(f"lm seed {seed}: {lm_runs[-1]}", file=sys.stderr, flush=True)
      if peer:
        peer_runs.append(run_peer(peer, seed, a.steps))
        print(f"peer seed {seed}: {peer_runs[-1]}", file=sys.stderr, flush=True)

  mid = a.steps // 2
  print(f"| run | val loss @{mid} | val loss @{a.steps} | full val split @{a.steps} | ms/step "
        "| tokens/s | wall s |")
  print("|---|---|---|---|---|---|---|")
  for seed, r in zip(a.seeds, lm_runs):
    print(row(f"lm seed {seed}", r, a.steps))
  lm_mean = mean_of(lm_runs)
  print(row(f"**lm mean of {len(lm_runs)}**", lm_mean, a.steps))
  if peer_runs:
    for seed, r in zip(a.seeds, peer_runs):
      print(row(f"peer seed {1337 + seed}", r, a.steps))
    peer_mean = mean_of(peer_runs)
    print(row(f"**peer mean of {len(peer_runs)}**", peer_mean, a.steps))
    # Paired by seed: each lm run sat next to its peer run on the machine.
    speed = statistics.median(pr["ms"] / lr["ms"] for lr, pr in zip(lm_runs, peer_runs))
    wall = statistics.median(pr["wall"] / lr["wall"] for lr, pr in zip(lm_runs, peer_runs))
    print(f"\nlm throughput / peer throughput: **{speed:.2f}x** (median of per-seed ratios); "
          f"peer wall / lm wall: **{wall:.2f}x**")
  if note:
    print(f"\n{note}")
  print(f"\nReference: {NANOGPT}.")


if __name__ == "__main__":
  main()
