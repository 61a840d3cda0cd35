"""lm-sample: streams text from a run's saved tokenizer without TensorFlow, batch JSONL,
relative paths (issue 8 item 1), runs on gin-registered tasks (issue 8 item 9), user errors."""
import json
import os
import subprocess
import sys

import pytest

import lm
from conftest import NANO_RUN, REPO
from lm.cli import sample, train

TF_BLOCKED = """
import sys
for name in ("tensorflow", "seqio", "tensorflow_datasets"):
  sys.modules[name] = None  # any import of them now raises ImportError
from lm.cli import sample
sample.main(sys.argv[1:])
"""


def _run_blocked(args, cwd):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "-c", TF_BLOCKED] + args, cwd=cwd, env=env,
                        capture_output=True, text=True)


def _main(args) -> int:
  with pytest.raises(SystemExit) as exit_info:
    sample.main(args)
  return exit_info.value.code


@pytest.mark.slow
def test_streams_a_run_without_tensorflow_from_a_relative_path(trained_run):
  out = _run_blocked(["--model_dir", os.path.basename(trained_run), "--prompt", "ROMEO:",
                      "--max_new_tokens", "20", "--temperature", "0"],
                     cwd=os.path.dirname(trained_run))
  assert out.returncode == 0, out.stderr[-3000:]
  expected = lm.load(trained_run).generate(["ROMEO:"], max_new_tokens=20)[0]
  assert len(expected) >= 10 and out.stdout == "ROMEO:" + expected + "\n"


class _Writes:
  """A stdout that records each write."""

  def __init__(self):
    self.writes = []

  def write(self, s):
    self.writes.append(s)

  def flush(self):
    pass


def test_text_arrives_in_chunks(trained_run, monkeypatch):
  stdout = _Writes()
  monkeypatch.setattr(sys, "stdout", stdout)
  assert _main(["--model_dir", trained_run, "--prompt", "ROMEO:", "--max_new_tokens", "24",
                "--temperature", "0.8", "--top_k", "20", "--seed", "3"]) == 0
  monkeypatch.undo()
  expected = lm.load(trained_run).generate(["ROMEO:"], max_new_tokens=24, temperature=0.8,
                                           top_k=20, seed=3)[0]
  assert "".join(stdout.writes) == "ROMEO:" + expected + "\n"
  assert len([w for w in stdout.writes if w.strip()]) >= 4  # prompt, then chunks of 8 steps


def test_default_length_fits_the_learned_positions(trained_run, capsys):
  # max_len 32, a 6-token prompt: at most 26 new tokens (the old 300 needed a cropped window).
  assert _main(["--model_dir", trained_run, "--prompt", "ROMEO:", "--temperature", "0"]) == 0
  expected = lm.load(trained_run).generate(["ROMEO:"], max_new_tokens=26)[0]
  assert capsys.readouterr().out == "ROMEO:" + expected + "\n"


def test_prompt_file_writes_jsonl(trained_run, tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "ROMEO:"}\n"JULIET:"\n\n{"prompt": "To be"}\n')
  out = tmp_path / "out.jsonl"
  assert _main(["--model_dir", trained_run, "--prompt_file", str(prompts), "--output",
                str(out), "--temperature", "0", "--max_new_tokens", "12", "--stop", "\n"]) == 0
  records = [json.loads(l) for l in out.read_text().splitlines()]
  texts = ["ROMEO:", "JULIET:", "To be"]
  expected = lm.load(trained_run).generate(texts, max_new_tokens=12, stop=["\n"])
  assert records == [{"prompt": p, "output": o} for p, o in zip(texts, expected)]
  assert all("\n" not in r["output"] for r in records)
  assert _main(["--model_dir", trained_run, "--prompt_file", str(prompts), "--output",
                str(out), "--num_beams", "2", "--max_new_tokens", "4"]) == 0
  beams = [json.loads(l)["beams"] for l in out.read_text().splitlines()]
  assert [len(b) for b in beams] == [2, 2, 2] and beams[0][0][1] >= beams[0][1][1]


@pytest.mark.slow
def test_runs_of_gin_registered_tasks_sample(tmp_path, monkeypatch):
  """Issue 8 item 9: a run whose task was registered through gin (a files task) used to fail
  in lm-sample, which looked the task up without the run's config.gin. Its saved tokenizer
  now decodes it, in a fresh process with TensorFlow blocked."""
  monkeypatch.chdir(REPO)
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20)
  run = tmp_path / "run"
  with pytest.raises(SystemExit) as exit_info:
    train.main([f"--model_dir={run}", "--gin.TRAIN_STEPS=2", "--gin.EVAL_EVERY=0",
                "--gin.sample_after_training.num_tokens=0"] + NANO_RUN[:-1] +
               ["--gin.InputConfig.task=@register_files_task()",
                "--gin.register_files_task.name='gin_files_task'",
                f"--gin.register_files_task.split_patterns={{'train': '{corpus}', "
                f"'validation': '{corpus}'}}",
                "--gin.register_files_task.vocabulary=@shakespeare_char_vocabulary()",
                "--gin.InputConfig.continuous=False"])
  assert exit_info.value.code == 0
  assert json.load(open(run / "model.json"))["task"] == "gin_files_task"
  out = _run_blocked(["--model_dir", str(run), "--prompt", "First", "--max_new_tokens", "5"],
                     cwd=str(tmp_path))
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.startswith("First") and len(out.stdout) > len("First\n")


@pytest.mark.parametrize("setup, args, message", [
    (None, ["--model_dir", "/nonexistent"], "is not an lm model directory"),
    ("no_tokenizer", [], "has no tokenizer"),
    (None, ["--prompt_file", "/nonexistent.jsonl"], "prompt file not found"),
    ("bad_jsonl", [], "not JSON"),
    (None, ["--top_p", "1.5"], "top_p=1.5 must be in [0, 1]"),  # issue 19 item 6
    (None, ["--top_k", "-3", "--min_p", "-1"], "top_k=-3 must be an integer >= 0"),
])
def test_user_errors(trained_run, tmp_path, capsys, setup, args, message):
  model_dir = trained_run
  if setup == "no_tokenizer":
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    os.symlink(os.path.join(trained_run, "checkpoints"), model_dir / "checkpoints")
    (model_dir / "model.json").write_text(open(os.path.join(trained_run, "model.json")).read())
  if setup == "bad_jsonl":
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{oops\n')
    args = ["--prompt_file", str(tmp_path / "p.jsonl")]
  assert _main(["--model_dir", str(model_dir)] + args) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1
