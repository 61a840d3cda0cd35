"""Preference tuning (DPO, IPO, SimPO) vs SFT alone on an instruction task with a checkable answer.

  python experiments/finetuning/dpo.py [--base DIR] [--sft_steps 300] [--pref_steps 100]
      [--sft_lr 2e-3] [--pref_lr 1e-4] [--workdir D]

The task is lora_vs_full.py's: "User: shout WORD\\nAssistant: " -> WORD in capitals (then EOS),
lowercase Shakespeare words of 3-8 letters, 200 of them held out for the test. From a pretrained
character model (--base, or the CPU recipe trained here for --pretrain_steps):

  SFT          instruct.gin on the prompt/response records for --sft_steps (the DPO start);
  SFT longer   the same for --sft_steps + --pref_steps: SFT alone with the same step count;
  SFT -> X     dpo.gin from SFT for --pref_steps on preference pairs, X = DPO, IPO or SimPO;
  base -> DPO  DPO straight from the pretrained model (no SFT).

Pairs: chosen = the correct answer; rejected = SFT's own greedy answer where it is wrong, else a
corrupted answer (the word left in lowercase, one letter left lowercase, one letter replaced, or
one letter dropped). Training pairs come from --pairs training words, held-out pairs from the
validation words (during training) and the 200 test words (the table).

Columns (on the test words): exact-match accuracy of the greedy answer; letters right = the
fraction of the answer's positions holding the right capital (over the longer of answer and
word); pair accuracy = how often log p(chosen) > log p(rejected); the implicit reward margin
beta * [log pi/pi_ref(chosen) - log pi/pi_ref(rejected)] (beta = 0.1) and its accuracy
(margin > 0), pi_ref being the model the row started from (the pretrained model for SFT rows).
SFT runs at --sft_lr, preference runs at --pref_lr (SimPO with beta 2, gamma 1), both with 10
warmup steps and cosine decay to a tenth. All batches are 12 (sequences or
pairs) of at most 64 tokens. Run directories already in --workdir are reused, not retrained.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lora_vs_full import make_data  # noqa: E402  (the task)
from transfer import ROOT, pretrain  # noqa: E402

QUIET = ["--gin.sample_after_training.num_tokens=0", "--gin.train.progress=False"]
COMMON = ["--gin.BATCH_SIZE=12", "--gin.SEQ_LEN=64", "--gin.EVAL_STEPS=5", "--gin.LOG_EVERY=20",
          "--gin.OptimizerConfig.warmup_steps=10", "--gin.OptimizerConfig.weight_decay=0.0"]
BETA = 0.1


def prompt(word: str) -> str:
  return f"shout {word}"


def lm_train(model_dir: str, argv: list[str]) -> str:
  """One lm-train process; returns model_dir (a finished run already in --workdir is kept)."""
  if os.path.exists(os.path.join(model_dir, "metrics.jsonl")):
    return model_dir
  cmd = [sys.executable, "-m", "lm.cli.train", f"--model_dir={model_dir}"] + argv + QUIET
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if proc.returncode:
    sys.exit(f"lm-train failed for {model_dir}:\n{proc.stderr[-3000:]}")
  return model_dir


def sft(workdir: str, base: str, name: str, steps: int, lr: float) -> str:
  return lm_train(os.path.join(workdir, name), [
      "--gin_file=gin_configs/runs/instruct.gin", f"--gin.INIT_FROM='{base}'",
      f"--gin.INSTRUCT_TRAIN='{workdir}/train.jsonl'",
      f"--gin.INSTRUCT_VALIDATION='{workdir}/validation.jsonl'", f"--gin.TRAIN_STEPS={steps}",
      f"--gin.EVAL_EVERY={steps}", f"--gin.CHECKPOINT_EVERY={steps}",
      f"--gin.LEARNING_RATE={lr}", f"--gin.OptimizerConfig.end_learning_rate={lr / 10}"] + COMMON)


def preference(workdir: str, start: str, name: str, steps: int, loss: str, lr: float) -> str:
  simpo = loss == "simpo"
  return lm_train(os.path.join(workdir, name), [
      "--gin_file=gin_configs/runs/dpo.gin", f"--gin.INIT_FROM='{start}'",
      f"--gin.PAIRS_TRAIN='{workdir}/pairs_train.jsonl'",
      f"--gin.PAIRS_VALIDATION='{workdir}/pairs_validation.jsonl'", f"--gin.LOSS='{loss}'",
      f"--gin.BETA={2.0 if simpo else BETA}", "--gin.SIMPO_GAMMA=1.0",
      f"--gin.REFERENCE_LOGPS='{'none' if simpo else 'cached'}'", f"--gin.TRAIN_STEPS={steps}",
      f"--gin.EVAL_EVERY={steps}", f"--gin.CHECKPOINT_EVERY={steps}",
      f"--gin.LEARNING_RATE={lr}", f"--gin.OptimizerConfig.end_learning_rate={lr / 10}"] + COMMON)


def greedy(model, words: list[str]) -> list[str]:
  return [a.strip() for a in model.generate([f"User: {prompt(w)}\nAssistant: " for w in words],
                                            max_new_tokens=10)]


def corrupt(word: str, rng: random.Random) -> str:
  """A wrong answer: the word in lowercase, or in capitals with one letter lowercase, replaced
  or dropped."""
  upper, i = word.upper(), rng.randrange(len(word))
  kind = rng.randrange(4)
  if kind == 0:
    return word
  if kind == 1:
    return upper[:i] + word[i] + upper[i + 1:]
  if kind == 2:
    return upper[:i] + rng.choice(sorted(set("ABCDEFGHIJKLMNOPQRSTUVWXYZ") - {upper[i]})) + \
        upper[i + 1:]
  return upper[:i] + upper[i + 1:]


def write_pairs(path: str, words: list[str], answers: list[str], seed: int) -> int:
  """Pairs of the correct answer and a wrong one; returns how many wrong ones are SFT's own."""
  rng, own = random.Random(seed), 0
  with open(path, "w") as f:
    for word, answer in zip(words, answers):
      wrong = answer != word.upper() and answer
      own += bool(wrong)
      f.write(json.dumps({"prompt": prompt(word), "chosen": word.upper(),
                          "rejected": answer if wrong else corrupt(word, rng)}) + "\n")
  return own


def read_words(path: str) -> list[str]:
  with open(path) as f:
    return [json.loads(line)["prompt"].split(" ", 1)[1] for line in f]


def row(model_dir: str, reference_dir: str, test_words, pairs, reference_logps) -> dict:
  import lm
  from lm.finetuning.preference import PreferenceLoss, pair_metrics
  from lm.finetuning.preference_data import score_pairs
  model = lm.load(model_dir)
  answers = greedy(model, test_words)
  accuracy = np.mean([a == w.upper() for a, w in zip(answers, test_words)])
  letters = np.mean([sum(x == y for x, y in zip(a, w.upper())) / max(len(a), len(w))
                     for a, w in zip(answers, test_words)])
  chosen, rejected = score_pairs(model, pairs)
  m = pair_metrics(PreferenceLoss(beta=BETA), (chosen, rejected), reference_logps[reference_dir])
  return {"accuracy": accuracy, "letters": letters,
          "pair_accuracy": float(np.mean(chosen > rejected)),
          "margin": m["reward_margin"], "reward_accuracy": m["reward_accuracy"]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--base", help="pretrained model dir (default: pretrain one here)")
  parser.add_argument("--pretrain_steps", type=int, default=400)
  parser.add_argument("--sft_steps", type=int, default=300)
  parser.add_argument("--sft_lr", type=float, default=2e-3)
  parser.add_argument("--pref_steps", type=int, default=100)
  parser.add_argument("--pref_lr", type=float, default=1e-4)
  parser.add_argument("--pairs", type=int, default=1200, help="training pairs")
  parser.add_argument("--workdir", default=None, help="default: a new temporary directory")
  args = parser.parse_args()
  os.chdir(ROOT)
  workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="lm_dpo_"))
  os.makedirs(workdir, exist_ok=True)
  base = os.path.abspath(args.base) if args.base else pretrain(workdir, args.pretrain_steps)
  test_words = make_data(workdir)
  start = sft(workdir, base, "sft", args.sft_steps, args.sft_lr)

  import lm
  from lm.finetuning.preference_data import encode_pairs, read_pairs, score_pairs
  sft_model = lm.load(start)
  own = {}
  for split, words in (("train", read_words(f"{workdir}/train.jsonl")[:args.pairs]),
                       ("validation", read_words(f"{workdir}/validation.jsonl")),
                       ("test", test_words)):
    own[split] = write_pairs(f"{workdir}/pairs_{split}.jsonl", words, greedy(sft_model, words),
                             seed=len(split))
  runs = {"pretrained": (base, base),
          "SFT": (start, base),
          f"SFT, {args.sft_steps + args.pref_steps} steps": (
              sft(workdir, base, "sft_longer", args.sft_steps + args.pref_steps, args.sft_lr),
              base)}
  for loss in ("dpo", "ipo", "simpo"):
    runs[f"SFT -> {loss.upper() if loss != 'simpo' else 'SimPO'}"] = (
        preference(workdir, start, f"sft_{loss}", args.pref_steps, loss, args.pref_lr), start)
  runs["pretrained -> DPO"] = (
      preference(workdir, base, "base_dpo", args.pref_steps, "dpo", args.pref_lr), base)

  pairs, _ = encode_pairs(sft_model.tokenizer, read_pairs(f"{workdir}/pairs_test.jsonl"), 64)
  reference_logps = {d: score_pairs(lm.load(d), pairs) for d in (base, start)}
  print(f"\n{len(test_words)} held-out words; {args.pairs} training pairs ({own['train']} with "
        f"SFT's own wrong answer as rejected), test pairs: {own['test']} of {len(test_words)}; "
        f"{args.sft_steps} SFT steps, {args.pref_steps} preference steps (lr {args.pref_lr})\n")
  print("| run | starts from | accuracy | letters right | pair accuracy | reward margin | "
        "reward accuracy |")
  print("|---|---|---|---|---|---|---|")
  for name, (model_dir, ref) in runs.items():
    r = row(model_dir, ref, test_words, pairs, reference_logps)
    print(f"| {name} | {'-' if model_dir == base else os.path.basename(ref)} | "
          f"{r['accuracy']:.1%} | {r['letters']:.1%} | {r['pair_accuracy']:.1%} | "
          f"{r['margin']:+.3f} | {r['reward_accuracy']:.1%} |")
  print(f"\nrun directories: {workdir}")


if __name__ == "__main__":
  main()
