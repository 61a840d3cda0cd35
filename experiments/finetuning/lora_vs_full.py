"""Full fine-tuning vs LoRA (ranks 4/16/64) on an instruction task with a checkable answer.

  python experiments/finetuning/lora_vs_full.py [--base DIR] [--steps 800] [--ranks 4 16 64]

The task: "User: ends WORD\\nAssistant: " -> the word's first and last letters in capitals
(then EOS), "ends romeo" -> "RO", for lowercase words of 3-8 letters from Shakespeare's train
split; 200 words are held out for the test and never trained on. Records are
{"prompt", "response"} JSONL read by lm.data.instruct.register_instruct_task (plain chat
template, loss on the response and its EOS only). Every run starts from the same pretrained
character model (--base, or the CPU recipe trained here for --pretrain_steps on the
Shakespeare train split) and runs --steps steps of batch 12 x 64 (packed); full fine-tuning
at 1e-3, LoRA at 3e-3 with alpha = 2 x rank on all attention and MLP kernels (AdamW, 20
warmup steps, cosine to 10 %, no weight decay for both).

Each run is its own process; the table gives exact-match accuracy of greedy answers on the
held-out words (lm.load, which merges a LoRA run; also of the first letter alone), trainable
parameters, optimizer-state bytes (the AdamW state of the trained tree), the median step time
over logging windows after the first (compilation) and the process's peak resident memory
(getrusage ru_maxrss). A rerun with the same --workdir reuses finished runs (lm-train resumes
at their last step, so its RSS is that of a restore, not of training) and evaluates again.
"""
import argparse
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transfer import FINETUNE, ROOT, pretrain  # noqa: E402

LORA = os.path.join(ROOT, "gin_configs/runs/lora.gin")
TASK = "word_ends"


def answer(word: str) -> str:
  return (word[0] + word[-1]).upper()


def make_data(workdir: str, n_test: int = 200, seed: int = 0) -> list[str]:
  """Writes train.jsonl and validation.jsonl; returns the held-out test words."""
  from lm.data.tasks import shakespeare_text, split_text
  words = sorted(set(re.findall(r"\b[a-z]{3,8}\b", split_text(shakespeare_text(), 0.9)["train"])))
  random.Random(seed).shuffle(words)
  test, validation, train = words[:n_test], words[n_test:n_test + 100], words[n_test + 100:]
  for name, split in (("train", train), ("validation", validation)):
    with open(os.path.join(workdir, f"{name}.jsonl"), "w") as f:
      for w in split:
        f.write(json.dumps({"prompt": f"ends {w}", "response": answer(w)}) + "\n")
  return test


def worker(model_dir: str, data: str, base: str, argv: list[str]):
  """One training run in this process; prints a JSON line of its sizes and peak memory."""
  from lm.cli import train  # noqa: F401  (registers sample_after_training)
  from lm.cli.common import parse_gin
  from lm.data import pipeline  # noqa: F401
  from lm.data.instruct import register_instruct_task
  from lm.data.vocabularies import model_vocabulary
  from lm.finetuning.lora import read_lora_json, state_sizes
  from lm.training import loop
  files = [a.split("=", 1)[1] for a in argv if a.startswith("--gin_file=")]
  bindings = [a[len("--gin."):].replace("=", " = ", 1) for a in argv if a.startswith("--gin.")]
  parse_gin(files, bindings + [f"INIT_FROM = '{base}'", f"TASK = '{TASK}'"])
  register_instruct_task(TASK, {"train": os.path.join(data, "train.jsonl"),
                                "validation": os.path.join(data, "validation.jsonl")},
                         model_vocabulary(base))
  result = loop.train(model_dir)
  sizes = read_lora_json(model_dir) or state_sizes(result.state.params, result.state.opt_state)
  print("RESULT " + json.dumps({
      "trainable_params": sizes["trainable_params"],
      "optimizer_state_bytes": sizes["optimizer_state_bytes"],
      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run(name: str, workdir: str, base: str, argv: list[str]) -> dict:
  model_dir = os.path.join(workdir, name)
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", model_dir, "--data", workdir,
         "--base", base, "--"]
  proc = subprocess.run(cmd + argv, cwd=ROOT, capture_output=True, text=True)
  line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
  if proc.returncode or line is None:
    sys.exit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
  out = json.loads(line[len("RESULT "):])
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    ms = [json.loads(l)["train/step_time_ms"] for l in f if "train/step_time_ms" in l]
  out["step_ms"] = statistics.median(ms[1:] or ms)
  out["model_dir"] = model_dir
  return out


def accuracy(model_dir: str, words: list[str]) -> tuple[float, float]:
  """(exact-match accuracy of the greedy answers, accuracy of their first letter)."""
  import lm
  model = lm.load(model_dir)
  # Text prompts start with the run's start id (tokenizer/start.json), as training did.
  prompts = [f"User: ends {w}\nAssistant: " for w in words]
  answers = [a.strip() for a in model.generate(prompts, max_new_tokens=4)]
  exact = sum(a == answer(w) for a, w in zip(answers, words)) / len(words)
  first = sum(a[:1] == answer(w)[0] for a, w in zip(answers, words)) / len(words)
  return exact, first


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--base", help="pretrained model dir (default: pretrain one here)")
  parser.add_argument("--pretrain_steps", type=int, default=400)
  parser.add_argument("--steps", type=int, default=800)
  parser.add_argument("--ranks", type=int, nargs="+", default=[4, 16, 64])
  parser.add_argument("--workdir", default=None, help="default: a new temporary directory")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--data", help=argparse.SUPPRESS)
  args, rest = parser.parse_known_args()
  os.chdir(ROOT)
  if args.worker:
    return worker(args.worker, args.data, args.base, [a for a in rest if a != "--"])
  workdir = args.workdir or tempfile.mkdtemp(prefix="lm_lora_")
  os.makedirs(workdir, exist_ok=True)
  base = args.base or pretrain(workdir, args.pretrain_steps)
  test_words = make_data(workdir)
  common = [f"--gin.TRAIN_STEPS={args.steps}", "--gin.BATCH_SIZE=12", "--gin.SEQ_LEN=64",
            "--gin.EVAL_EVERY=100", "--gin.EVAL_STEPS=5", "--gin.LOG_EVERY=25",
            f"--gin.CHECKPOINT_EVERY={args.steps}", "--gin.OptimizerConfig.warmup_steps=20",
            "--gin.OptimizerConfig.weight_decay=0.0",
            "--gin.sample_after_training.num_tokens=0", "--gin.train.progress=False"]
  runs = {"full fine-tuning": run("full", workdir, base, [f"--gin_file={FINETUNE}"] + common + [
      "--gin.LEARNING_RATE=1e-3", "--gin.OptimizerConfig.end_learning_rate=1e-4"])}
  for r in args.ranks:
    runs[f"LoRA r={r}"] = run(f"lora{r}", workdir, base, [f"--gin_file={LORA}"] + common + [
        f"--gin.LORA_RANK={r}", f"--gin.LORA_ALPHA={2 * r}", "--gin.LEARNING_RATE=3e-3",
        "--gin.OptimizerConfig.end_learning_rate=3e-4"])
  before = accuracy(base, test_words)
  print(f"\n{len(test_words)} held-out words, exact match of the greedy answer (first letter "
        f"alone); pretrained model before fine-tuning: {before[0]:.1%} ({before[1]:.1%})\n")
  print("| run | accuracy | first letter | trainable params | optimizer state | ms/step | "
        "peak RSS |")
  print("|---|---|---|---|---|---|---|")
  for name, out in runs.items():
    exact, first = accuracy(out["model_dir"], test_words)
    print(f"| {name} | {exact:.1%} | {first:.1%} | "
          f"{out['trainable_params']:,} | {out['optimizer_state_bytes'] / 1024:,.1f} KiB | "
          f"{out['step_ms']:.1f} | {out['max_rss_mb']:,.0f} MB |")
  print(f"\nrun directories: {workdir}")


if __name__ == "__main__":
  main()
