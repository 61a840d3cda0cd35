"""Train short, test long (Press et al., 2022, ALiBi): position encodings evaluated past the
training length, on character-level Shakespeare.

  python experiments/length_extrapolation/run.py [sweep|eval|all] [--out_dir DIR] [--steps 600]

`sweep`: one lm-sweep of gin_configs/runs/shakespeare_char_cpu.gin (context 64) over
ModelConfig.positions = learned / sinusoidal / rope / alibi / none and SEED = 0, 1, 2, shortened
to --steps (re-running it resumes). `eval`: the loss (nats per character) of each finished run
on the first --eval_chars characters of the validation split in disjoint windows of 64, 128, 256 and 512 characters (learned
positions only up to their 64) through lm-eval's perplexity path
(`lm-eval --tasks seqio:tiny_shakespeare_char:validation --seq_len L`), then prints the table of
mean ± std over seeds, writes results.json and results.md here and draws length_extrapolation.png.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
POSITIONS = ["learned", "sinusoidal", "rope", "alibi", "none"]
LENGTHS = [64, 128, 256, 512]
TRAIN_LEN = 64


def sweep_command(out_dir: str, steps: int, parallel: int) -> list[str]:
  return ["lm-sweep", "--gin_file=gin_configs/runs/shakespeare_char_cpu.gin",
          "--grid", f"ModelConfig.positions={json.dumps(POSITIONS)}", "--grid", "SEED=[0,1,2]",
          f"--out_dir={out_dir}", f"--parallel={parallel}", f"--gin.TRAIN_STEPS={steps}",
          f"--gin.EVAL_EVERY={steps // 3}", f"--gin.CHECKPOINT_EVERY={steps // 3}",
          "--gin.sample_after_training.num_tokens=0"]


def evaluate_runs(out_dir: str, chars: int) -> list[dict]:
  """Validation loss at every length for each finished run (cached in RUN/eval/lengths.json).

  chars: the first characters of the validation split (one token each) to score.
  """
  import lm
  from lm.data.documents import documents
  from lm.evaluation.perplexity import window_logprobs
  from lm.sweep import collect
  _, (ids,) = documents("tiny_shakespeare_char", "validation")
  docs_ids = [ids[:chars]]
  out = []
  for row in collect(out_dir):
    if row["status"] != "done":
      print(f"skip {row['name']}: {row['status']}")
      continue
    run_dir = os.path.join(out_dir, row["name"])
    cache = os.path.join(run_dir, "eval", f"lengths_{len(docs_ids[0])}.json")
    if os.path.exists(cache):
      losses = json.load(open(cache))
    else:
      model = lm.load(run_dir)
      losses = {}
      for length in LENGTHS:
        if model.config.positions == "learned" and length > model.config.max_len:
          continue
        # Disjoint windows of `length` (the first token after the BOS/EOS prefix): mean nats per
        # character, what lm-eval reports as log(token_perplexity).
        lls = window_logprobs(model, docs_ids, seq_len=length)
        losses[str(length)] = -float(lls.sum()) / len(docs_ids[0])
      os.makedirs(os.path.dirname(cache), exist_ok=True)
      json.dump(losses, open(cache, "w"))
    print(row["name"], {k: round(v, 4) for k, v in losses.items()}, flush=True)
    out.append({"name": row["name"], "positions": row["point"]["ModelConfig.positions"],
                "seed": row["point"]["SEED"], "eval_loss": row["eval_loss_final"],
                "losses": losses})
  return out


def _waiting(out_dir: str) -> bool:
  """Whether some run of the sweep may still finish (pending, running or resumable)."""
  from lm.sweep import collect
  rows = collect(out_dir)
  return len(rows) < len(POSITIONS) * 3 or any(r["status"] in ("pending", "incomplete")
                                                for r in rows)


def summarize(runs: list[dict]) -> dict:
  """{positions: {length: (mean, std, n)}} over seeds."""
  table = {}
  for pos in POSITIONS:
    table[pos] = {}
    for length in LENGTHS:
      vals = [r["losses"][str(length)] for r in runs
              if r["positions"] == pos and str(length) in r["losses"]]
      if vals:
        table[pos][length] = (statistics.mean(vals),
                              statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))
  return table


def markdown(table: dict) -> str:
  lines = ["| positions | " + " | ".join(f"L={n}" for n in LENGTHS) + " | L=512 - L=64 |",
           "|---|" + "---|" * (len(LENGTHS) + 1)]
  for pos, cells in table.items():
    row = [f"{cells[n][0]:.4f} ± {cells[n][1]:.4f}" if n in cells else "-" for n in LENGTHS]
    delta = (f"{cells[512][0] - cells[64][0]:+.4f}" if 512 in cells and 64 in cells else "-")
    lines.append(f"| {pos} | " + " | ".join(row) + f" | {delta} |")
  return "\n".join(lines) + "\n"


def plot(table: dict, path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for pos, cells in table.items():
    lengths = sorted(cells)
    mean = [cells[n][0] for n in lengths]
    std = [cells[n][1] for n in lengths]
    ax.errorbar(lengths, mean, yerr=std, marker="o", capsize=3, label=pos)
  ax.axvline(TRAIN_LEN, color="gray", ls=":", lw=1)
  ax.set_xscale("log", base=2)
  ax.set_xticks(LENGTHS, [str(n) for n in LENGTHS])
  ax.set_xlabel("evaluation length (characters); trained at 64")
  ax.set_ylabel("validation loss (nats/char)")
  ax.set_title("Train short, test long: tiny Shakespeare, char level")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110, metadata={"Software": None})
  plt.close(fig)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("stage", nargs="?", default="all", choices=["sweep", "eval", "all"])
  p.add_argument("--out_dir", default="/tmp/lm/length_extrapolation")
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--parallel", type=int, default=2)
  p.add_argument("--watch", action="store_true",
                 help="eval: keep evaluating runs as they finish until none is left to wait for")
  p.add_argument("--eval_chars", type=int, default=16384,
                 help="score the first N characters of the validation split (of 111,540)")
  a = p.parse_args()
  if a.stage in ("sweep", "all"):
    cmd = sweep_command(a.out_dir, a.steps, a.parallel)
    print("$", " ".join(cmd[:3]), *(f"'{c}'" if "[" in c else c for c in cmd[3:]), flush=True)
    code = subprocess.run([sys.executable, "-m", "lm.cli.sweep"] + cmd[1:], cwd=ROOT).returncode
    if code:
      print(f"lm-sweep: {code} run(s) failed or the sweep stopped", file=sys.stderr)
  if a.stage in ("eval", "all"):
    runs = evaluate_runs(a.out_dir, a.eval_chars)
    while a.watch and len(runs) < len(POSITIONS) * 3 and _waiting(a.out_dir):
      time.sleep(60)
      runs = evaluate_runs(a.out_dir, a.eval_chars)
    table = summarize(runs)
    md = markdown(table)
    print(md)
    with open(os.path.join(HERE, "results.json"), "w") as f:
      json.dump({"steps": a.steps, "eval_chars": a.eval_chars, "runs": runs}, f, indent=1)
    with open(os.path.join(HERE, "results.md"), "w") as f:
      f.write(md)
    plot(table, os.path.join(HERE, "length_extrapolation.png"))


if __name__ == "__main__":
  main()
