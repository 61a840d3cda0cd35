"""Transfer: a model pretrained on Shakespeare's train split, fine-tuned on a held-out slice, vs
the same model trained from scratch on that slice for the same steps. Prints the gain curve.

  python experiments/finetuning/transfer.py [--pretrain_steps 400] [--steps 200] [--workdir D]

The held-out text is the last 10 % of tinyshakespeare (never seen in pretraining: nanoGPT's
validation split), cut in two: its first three quarters are the fine-tuning corpus, its last
quarter the validation text. Both runs use the CPU recipe's model (4 layers, d=128, context
64, batch 12) and the same optimizer and schedule (AdamW 1e-3, 20 warmup steps, cosine to
1e-5); only the start differs: gin_configs/runs/finetune.gin from the pretrained run, or
random weights. Evals read the same 20 fixed validation batches every 25 steps; the last
column is the mean loss over every non-overlapping 64-character window of the validation text.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(ROOT, "gin_configs/runs/shakespeare_char_cpu.gin")
FINETUNE = os.path.join(ROOT, "gin_configs/runs/finetune.gin")
TASK = "shakespeare_heldout_char"
QUIET = ["--gin.sample_after_training.num_tokens=0", "--gin.train.progress=False"]


def heldout_texts() -> dict[str, str]:
  """The last 10 % of the corpus: 3/4 to fine-tune on, 1/4 to validate."""
  from lm.data.tasks import shakespeare_text, split_text
  heldout = split_text(shakespeare_text(), 0.9)["validation"]
  return split_text(heldout, 0.75)


def register_heldout_task():
  from lm.data import pipeline  # noqa: F401  (the built-in tasks)
  from lm.data.tasks import register_corpus_task, shakespeare_char_vocabulary
  import seqio
  if TASK not in seqio.TaskRegistry.names():
    register_corpus_task(TASK, heldout_texts(), shakespeare_char_vocabulary())


def train(model_dir: str, argv: list[str]):
  """lm-train in this process (so the held-out task registered here exists)."""
  import gin
  from lm.cli import train as train_cli
  gin.clear_config()
  try:
    train_cli.main([f"--model_dir={model_dir}"] + argv + QUIET)
  except SystemExit as e:
    if e.code:
      sys.exit(f"lm-train failed for {model_dir}")
  gin.clear_config()


def pretrain(workdir: str, steps: int) -> str:
  """The CPU recipe on the Shakespeare train split for `steps` steps (reused if present)."""
  model_dir = os.path.join(workdir, "pretrained")
  train(model_dir, [f"--gin_file={RECIPE}", f"--gin.TRAIN_STEPS={steps}",
                    f"--gin.CHECKPOINT_EVERY={steps}", "--gin.EVAL_STEPS=0"])
  return model_dir


def curve(model_dir: str) -> dict[int, float]:
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["eval/loss"] for r in rows if "eval/loss" in r}


def full_loss(model_dir: str, text: str, window: int = 64) -> float:
  """Mean next-character loss over every non-overlapping window of `text`."""
  import jax
  import lm
  model = lm.load(model_dir)
  ids = np.asarray(model.tokenizer.encode(text))
  n = (len(ids) - 1) // window
  inputs = ids[:n * window].reshape(n, window)
  targets = ids[1:n * window + 1].reshape(n, window)
  total = 0.0
  for i in range(0, n, 256):
    logits = model.logits(inputs[i:i + 256])
    logp = jax.nn.log_softmax(logits, axis=-1)
    total -= float(np.take_along_axis(np.asarray(logp), targets[i:i + 256, :, None], -1).sum())
  return total / targets.size


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pretrain_steps", type=int, default=400)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--workdir", default=None, help="default: a new temporary directory")
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="lm_transfer_")
  os.chdir(ROOT)
  register_heldout_task()
  base = pretrain(workdir, args.pretrain_steps)
  common = [f"--gin.TASK='{TASK}'", f"--gin.TRAIN_STEPS={args.steps}", "--gin.BATCH_SIZE=12",
            "--gin.SEQ_LEN=64", "--gin.LEARNING_RATE=1e-3", "--gin.EVAL_EVERY=25",
            "--gin.EVAL_STEPS=20", f"--gin.CHECKPOINT_EVERY={args.steps}",
            "--gin.InputConfig.continuous=True", "--gin.OptimizerConfig.warmup_steps=20",
            "--gin.OptimizerConfig.end_learning_rate=1e-5", "--gin.LOG_EVERY=25"]
  tuned, scratch = os.path.join(workdir, "finetuned"), os.path.join(workdir, "scratch")
  train(tuned, [f"--gin_file={FINETUNE}", f"--gin.INIT_FROM='{base}'"] + common)
  train(scratch, [f"--gin_file={RECIPE}"] + common)
  validation = heldout_texts()["validation"]
  before = full_loss(base, validation)
  ft, sc = curve(tuned), curve(scratch)
  print(f"\nHeld-out validation loss (nats/char); pretrained {args.pretrain_steps} steps, "
        f"before fine-tuning: {before:.4f} (full validation text)\n")
  print("| step | fine-tuned from pretrained | from scratch | gain |")
  print("|---|---|---|---|")
  for step in sorted(ft):
    print(f"| {step} | {ft[step]:.4f} | {sc[step]:.4f} | {sc[step] - ft[step]:.4f} |")
  last_ft, last_sc = full_loss(tuned, validation), full_loss(scratch, validation)
  print(f"| {args.steps}, full validation text | {last_ft:.4f} | {last_sc:.4f} | "
        f"{last_sc - last_ft:.4f} |")
  print(f"\nrun directories: {workdir}")


if __name__ == "__main__":
  main()
