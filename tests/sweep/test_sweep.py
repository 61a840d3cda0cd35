"""lm-sweep: one tiny sweep (a forced failure, killed mid-run and re-run) shared by the tests;
grids, tables and run status checked against hand-computed values."""
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO
from lm.cli import sweep as sweep_cli
from lm.errors import UserError
from lm.sweep import collect, grid, results, run_sweep, tables

pytestmark = pytest.mark.slow  # subprocesses

# Children run with TensorFlow blocked (it is most of lm-train's start-up) on random tokens.
NO_TF = """import sys
for name in ("tensorflow", "seqio", "tensorflow_datasets"):
  sys.modules[name] = None
"""
NANO = ["--gin_file=gin_configs/runs/pretrain.gin", "--gin_file=gin_configs/models/nano.gin",
        "--gin.train.input_cfg=@SyntheticInputConfig()",
        "--gin.train.batches_fn=@synthetic_batches", "--gin.SyntheticInputConfig.vocab_size=68",
        "--gin.SyntheticInputConfig.batch_size=8", "--gin.SyntheticInputConfig.seq_len=32",
        "--gin.LOG_EVERY=10", "--gin.EVAL_EVERY=50", "--gin.EVAL_STEPS=2",
        "--gin.CHECKPOINT_EVERY=50", "--gin.ModelConfig.max_len=32",
        "--gin.OptimizerConfig.warmup_steps=10"]
# learned: finishes first; bogus: a bad binding (lm-train's `error:` exit 2); rope: long enough
# to be killed after a checkpoint and resumed by the re-run.
GRIDS = ["--zip", "--grid", 'ModelConfig.positions=["learned","bogus","rope"]',
         "--grid", "TRAIN_STEPS=[20,20,400]"]
LEARNED, BOGUS, ROPE = ("positions-learned_TRAINSTEPS-20", "positions-bogus_TRAINSTEPS-20",
                        "positions-rope_TRAINSTEPS-400")


def _steps(run_dir, key="train/loss"):
  return [m["step"] for m in results.read_metrics(run_dir) if key in m]


def _complete_checkpoints(run_dir):
  """Orbax renames a step's temporary directory to the bare step number once it is complete."""
  path = os.path.join(run_dir, "checkpoints")
  return [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []


def _wait_for(condition, what, timeout=60):
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.02)


def _unlocked(out_dir):
  with open(os.path.join(out_dir, ".sweep.lock")) as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return False
  return True


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  """The sweep killed (SIGKILL to its process group) once learned has finished and rope has
  a checkpoint, then, once rope has saved and exited (the parent-death SIGTERM), re-run to the
  end. Returns (out_dir, rows after the kill, learned's metrics.jsonl then, the re-run's
  CompletedProcess)."""
  tmp = tmp_path_factory.mktemp("sweep")
  (tmp / "sitecustomize.py").write_text(NO_TF)
  out = str(tmp / "sweep")
  cmd = [sys.executable, "-m", "lm.cli.sweep", f"--out_dir={out}", "--parallel=2"] + GRIDS + NANO
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHONPATH=os.pathsep.join(filter(None, [str(tmp), os.environ.get("PYTHONPATH")])))
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  learned, rope = os.path.join(out, LEARNED), os.path.join(out, ROPE)
  deadline = time.monotonic() + 900
  try:
    # Cheap checks (no Orbax) so that rope cannot run to its end between two polls.
    while not (20 in _complete_checkpoints(learned) and 20 in _steps(learned)
               and any(s >= 50 for s in _complete_checkpoints(rope))):
      assert proc.poll() is None, proc.stdout.read()
      assert time.monotonic() < deadline, "the sweep did not get going"
      time.sleep(0.05)
  finally:
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep: its runs are in their own sessions
    proc.wait()
  # The runs hold the sweep's lock until they exit: a re-run before then would be refused.
  _wait_for(lambda: _unlocked(out), "the killed sweep's runs to exit", timeout=300)
  killed = {r["name"]: r for r in collect(out)}
  learned_metrics = open(os.path.join(out, LEARNED, "metrics.jsonl")).read()
  rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  return out, killed, learned_metrics, rerun


def test_killed_sweep_resumes_and_skips_finished_runs(swept):
  out, killed, learned_metrics, rerun = swept
  # After the kill: learned finished, rope killed after a checkpoint, bogus failed.
  assert killed[LEARNED]["status"] == "done"
  assert killed[ROPE]["status"] == "incomplete" and 50 <= killed[ROPE]["step"] < 400
  assert killed[BOGUS]["status"] == "failed"
  # The re-run: exit status = failed runs; learned skipped (one launch, metrics untouched).
  assert rerun.returncode == 1, rerun.stdout + rerun.stderr
  assert f"skip {LEARNED}" in rerun.stdout
  record = results.read_json(os.path.join(out, LEARNED, results.RUN_RECORD))
  assert len(record["attempts"]) == 1
  assert open(os.path.join(out, LEARNED, "metrics.jsonl")).read() == learned_metrics
  # rope, left behind by the killed sweep, got SIGTERM (the parent-death signal) and saved at
  # its current step, or, when the signal came before its handlers were watching, left its
  # last periodic checkpoint; the re-run resumed it from there and ran to the end, every step
  # logged once.
  attempts = results.read_json(os.path.join(out, ROPE, results.RUN_RECORD))["attempts"]
  assert len(attempts) == 2 and attempts[0]["returncode"] is None
  start = attempts[1]["start_step"]
  assert start in range(50, 400) and attempts[1]["returncode"] == 0
  with open(os.path.join(out, ROPE, results.TRAIN_LOG)) as f:
    saved = f"stopped by SIGTERM at step {start}: checkpoint saved" in f.read()
  assert saved or start % 50 == 0, start
  assert f"start {ROPE} (resuming at step {attempts[1]['start_step']})" in rerun.stdout
  assert _steps(os.path.join(out, ROPE)) == list(range(10, 401, 10))
  assert _steps(os.path.join(out, ROPE), "eval/loss") == list(range(50, 401, 50))


def test_failed_run_is_reported_and_the_others_finish(swept):
  out = swept[0]
  rows = {r["name"]: r for r in collect(out)}
  assert [rows[n]["status"] for n in (LEARNED, BOGUS, ROPE)] == ["done", "failed", "done"]
  assert rows[BOGUS]["error"] == "ModelConfig: unknown positions 'bogus'"
  assert not os.path.exists(os.path.join(out, BOGUS, "model.json"))  # lm-train wrote nothing
  # The row's numbers are the run's own files.
  metrics = results.read_metrics(os.path.join(out, ROPE))
  evals = [m["eval/loss"] for m in metrics if "eval/loss" in m]
  assert rows[ROPE]["eval_loss_final"] == evals[-1] and rows[ROPE]["eval_loss_best"] == min(evals)
  assert rows[ROPE]["train_loss"] == [m for m in metrics if "train/loss" in m][-1]["train/loss"]
  assert rows[ROPE]["steps"] == 400 and rows[ROPE]["params"] == rows[LEARNED]["params"] - 32 * 32
  md = open(os.path.join(out, "results.md")).read()
  assert f"- `{BOGUS}`: ModelConfig: unknown positions 'bogus'" in md
  assert "| rope | 400 | 1/1 |" in md and "| bogus | 20 | 0/1 |" in md
  lines = open(os.path.join(out, "results.csv")).read().splitlines()
  assert lines[0].startswith("name,ModelConfig.positions,TRAIN_STEPS,status,")
  assert len(lines) == 4 and lines[2].startswith(f"{BOGUS},bogus,20,failed,")
  assert os.path.getsize(os.path.join(out, "curves.png")) > 10_000


def test_report_rebuilt_from_run_directories_is_the_same(swept):
  out = swept[0]
  before = {f: open(os.path.join(out, f), "rb").read() for f in ("results.csv", "results.md")}
  for f in ("results.csv", "results.md", "curves.png"):
    os.remove(os.path.join(out, f))
  with pytest.raises(SystemExit) as exit_info:
    sweep_cli.main(["--report", out])
  assert exit_info.value.code == 1  # one failed run
  assert {f: open(os.path.join(out, f), "rb").read() for f in before} == before
  assert os.path.getsize(os.path.join(out, "curves.png")) > 10_000


def test_ablation_notebook_executes_on_the_sweep(swept, monkeypatch):
  monkeypatch.setenv("SWEEP_DIR", swept[0])
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(os.path.join(REPO, "notebooks", "ablation_analysis.ipynb"), as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs)
  assert "3 runs: {'done': 2, 'failed': 1, 'incomplete': 0, 'pending': 0}" in text
  tables_md = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
  assert tables_md == [open(os.path.join(swept[0], "results.md")).read()]
  assert any("image/png" in o.get("data", {}) for o in outputs)
  assert "best: {'ModelConfig.positions': " in text


def test_runs_in_parallel_with_the_wandb_group_and_name(tmp_path):
  """Stand-in commands: each writes the W&B variables it got, waits for its sibling to start
  (both run at once with --parallel 2) and exits 0 without training, which is a failure."""
  script = ("import os, sys, time\n"
            "open(sys.argv[1], 'w').write(os.environ['WANDB_RUN_GROUP'] + ' ' + os.environ['WANDB_NAME'])\n"
            "deadline = time.time() + 60\n"
            "while not os.path.exists(sys.argv[2]) and time.time() < deadline:\n"
            "  time.sleep(0.05)\n")
  runs = [{"name": f"r{i}", "point": {"X": i},
           "command": [sys.executable, "-c", script, str(tmp_path / f"r{i}.txt"),
                       str(tmp_path / f"r{1 - i}.txt")]} for i in range(2)]
  lines = []
  assert run_sweep(runs, str(tmp_path / "mysweep"), parallel=2, log=lines.append) == 2
  assert lines[:2] == ["start r0", "start r1"]
  assert [(tmp_path / f"r{i}.txt").read_text() for i in range(2)] == ["mysweep r0", "mysweep r1"]
  rows = collect(str(tmp_path / "mysweep"))
  assert [(r["status"], r["error"]) for r in rows] == [("failed", "exited before the final step")] * 2
  assert (tmp_path / "mysweep" / "results.md").exists()


# A stand-in run: notes every SIGINT / SIGTERM it gets in its log, says it is ready once its
# handlers are in place, and after its first signal "saves" until the test releases it, then
# exits as lm-train does after saving (128 + signal). Bounded: it gives up after 120 s.
STUB_RUN = """import os, signal, sys, time
log, ready, release = sys.argv[1:]
got = []
def note(signum, frame):
  got.append(signum)
  with open(log, "a") as f:
    f.write(signal.Signals(signum).name + "\\n")
for signum in (signal.SIGINT, signal.SIGTERM):
  signal.signal(signum, note)
open(ready, "w").close()
deadline = time.monotonic() + 120
while not (got and os.path.exists(release)) and time.monotonic() < deadline:
  time.sleep(0.01)
sys.exit(128 + got[0] if got else 1)
"""
STUB_SWEEP = """import json, sys
from lm.sweep import run_sweep
try:
  run_sweep(json.loads(sys.argv[1]), sys.argv[2], parallel=2)
except KeyboardInterrupt:
  sys.exit(130)
"""


@pytest.mark.parametrize("presses, kill, expected", [
    (1, "ctrl-c", ["SIGINT"]), (1, "sigterm", ["SIGTERM"]), (2, "ctrl-c", ["SIGINT", "SIGINT"])])
def test_a_stopped_sweep_passes_each_signal_once_to_every_run_and_waits(
    tmp_path, presses, kill, expected):
  """Issue 19.3: Ctrl-C (SIGINT to the sweep's whole process group, as a terminal sends it) or
  SIGTERM to the sweep reaches each run exactly once, so lm-train saves at its current step
  instead of being aborted by a second signal; a second Ctrl-C is passed on as the second
  signal (abort). The sweep starts no other run, waits for the runs to exit and records them
  as unfinished. Every step is a handshake (files, the sweep's output), never a race."""
  out = tmp_path / "sweep"
  files = lambda i, kind: str(tmp_path / f"r{i}.{kind}")
  runs = [{"name": f"r{i}", "point": {"X": i},
           "command": [sys.executable, "-c", STUB_RUN] + [files(i, k) for k in
                                                          ("log", "ready", "release")]}
          for i in range(3)]
  log = open(tmp_path / "sweep.out", "w")
  proc = subprocess.Popen([sys.executable, "-c", STUB_SWEEP, json.dumps(runs), str(out)],
                          cwd=REPO, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
  signals = lambda i: open(files(i, "log")).read().split() if os.path.exists(files(i, "log")) else []
  try:
    _wait_for(lambda: all(os.path.exists(files(i, "ready")) for i in range(2)), "two runs")
    for press in range(1, presses + 1):
      if kill == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
      else:
        os.kill(proc.pid, signal.SIGTERM)
      # The sweep has passed the signal on once it says so; a run that got more than the
      # presses (the old second signal) ends the wait too.
      word = "stopping" if press == 1 else "aborting"
      _wait_for(lambda: (open(tmp_path / "sweep.out").read().count(f": {word} r") == 2
                         or any(len(signals(i)) > press for i in range(2))), "the sweep")
    for i in range(2):
      open(files(i, "release"), "w").close()
    assert proc.wait(timeout=60) == 130
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
    for i in range(3):
      open(files(i, "release"), "w").close()  # a stand-in left behind exits
  assert [signals(i) for i in range(2)] == [expected, expected]
  assert not os.path.exists(files(2, "ready"))  # no run is started once stopping
  rows = {r["name"]: r for r in collect(str(out))}
  assert {n: r["status"] for n, r in rows.items()} == {"r0": "incomplete", "r1": "incomplete"}
  for i in range(2):
    attempts = results.read_json(str(out / f"r{i}" / results.RUN_RECORD))["attempts"]
    assert len(attempts) == 1 and attempts[0]["returncode"] is None


def test_grid_product_zip_and_names():
  grids = [grid.parse_grid('ModelConfig.positions=["rope", "alibi"]'),
           grid.parse_grid("SEED=[0, 1, 2]")]
  points = grid.expand(grids)
  assert points == [{"ModelConfig.positions": p, "SEED": s}
                    for p in ("rope", "alibi") for s in (0, 1, 2)]
  assert grid.run_names(points)[:2] == ["positions-rope_SEED-0", "positions-rope_SEED-1"]
  assert grid.expand([("A", [1, 2]), ("B", ["x", "y"])], zipped=True) == [
      {"A": 1, "B": "x"}, {"A": 2, "B": "y"}]
  assert grid.gin_binding("ModelConfig.positions", "rope") == "--gin.ModelConfig.positions='rope'"
  assert grid.gin_binding("MESH_SHAPE", (2, 4, 1)) == "--gin.MESH_SHAPE=(2, 4, 1)"
  # Two grids sharing a last name keep their full names; names a file cannot tell apart get
  # their index.
  assert grid.run_names([{"a.seed": 1, "b.seed": 2}]) == ["a.seed-1_b.seed-2"]
  assert grid.run_names([{"X": "a/b"}, {"X": "ab"}]) == ["000_X-ab", "001_X-ab"]


@pytest.mark.parametrize("args, message", [
    (["--grid", "SEED=0"], "expected a non-empty list"),
    (["--grid", "SEED=[a]"], "list of Python literals"),
    (["--grid", "[1]"], "expected NAME=[value, ...]"),
    (["--grid", "SEED=[0]", "--grid", "SEED=[1]"], "appears twice"),
    (["--zip", "--grid", "SEED=[0,1]", "--grid", "X=[0]"], "equal length"),
    (["--grid", "SEED=[0]", "--gin_file=missing.gin"], "gin file not found"),
    (["--grid", "SEED=[0]", "--parallel=0"], "--parallel must be >= 1"),
])
def test_user_errors_leave_nothing(tmp_path, capsys, args, message):
  out = tmp_path / "sweep"
  if not any(a.startswith("--gin_file") for a in args):
    args = args + [NANO[0]]
  with pytest.raises(SystemExit) as exit_info:
    sweep_cli.main(["--out_dir", str(out)] + args)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
  assert not out.exists()


def _row(name, point, status="done", eval_final=None, tokens=None):
  return {"name": name, "index": 0, "point": point, "status": status, "step": 10, "steps": 10,
          "train_loss": None, "eval_loss_best": None, "eval_loss_final": eval_final,
          "tokens_per_sec": tokens, "params": 100, "wall_s": 1.0, "extra": {}, "error": "",
          "curves": {"train/loss": [], "eval/loss": []}}


def test_grouped_table_averages_seeds_of_finished_runs():
  rows = [_row("a0", {"P": "rope", "SEED": 0}, eval_final=1.0, tokens=100.0),
          _row("a1", {"P": "rope", "SEED": 1}, eval_final=2.0, tokens=300.0),
          _row("a2", {"P": "rope", "SEED": 2}, status="failed", eval_final=9.0),
          _row("b0", {"P": "alibi", "SEED": 0}, eval_final=1.5, tokens=200.0)]
  rows[0]["extra"]["eval/arc_easy/acc"] = 0.25
  md = tables.markdown(rows)
  # rope: mean of 1 and 2 = 1.5, sample std = sqrt(0.5) = 0.7071; tokens 200 ± 141.
  assert "| rope | 2/3 | - | - | 1.5000 ± 0.7071 | 200 ± 141 | 1 ± 0 | 0.2500 |" in md
  assert "| alibi | 1/1 | - | - | 1.5000 | 200 | 1 | - |" in md
  assert "## Mean ± std over SEED (finished runs)" in md
  mean, std = tables.mean_std([1.0, 2.0, 4.0])
  assert mean == pytest.approx(7 / 3)
  assert std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))


def test_status_from_run_directory(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  assert results.run_status(str(run))["status"] == "pending"
  (run / results.RUN_RECORD).write_text(json.dumps({"attempts": [
      {"returncode": None, "wall_s": None, "error": None, "start_step": None}]}))
  assert results.run_status(str(run))["status"] == "incomplete"
  (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "train/loss": 2.0}) + "\n"
                                     + json.dumps({"step": 20, "train/loss": float("nan")}) + "\n")
  assert results.run_status(str(run)) == {"status": "failed", "step": 20, "steps": None,
                                          "error": "non-finite loss at step 20"}


def test_report_of_a_directory_without_runs_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="no sweep run directories"):
    results.write_report(str(tmp_path))


def test_eval_task_metrics_become_columns(tmp_path):
  run = tmp_path / "s" / "r0"
  run.mkdir(parents=True)
  (run / results.RUN_RECORD).write_text(json.dumps({"index": 0, "point": {"SEED": 0}, "attempts": [
      {"returncode": None, "wall_s": 2.5, "error": None, "start_step": None}]}))
  lines = [{"step": 10, "train/loss": 3.0, "train/tokens_per_sec": 5.0},
           {"step": 10, "eval/loss": 2.9, "eval/perplexity": 18.2, "eval/arc_easy/acc": 0.25},
           {"step": 20, "train/loss": 2.5, "train/tokens_per_sec": 7.0},
           {"step": 20, "eval/loss": 2.95, "eval/perplexity": 19.1, "eval/arc_easy/acc": 0.5}]
  (run / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  (row,) = collect(str(tmp_path / "s"))
  assert row["extra"] == {"eval/arc_easy/acc": 0.5}
  assert (row["train_loss"], row["eval_loss_best"], row["eval_loss_final"]) == (2.5, 2.9, 2.95)
  assert row["tokens_per_sec"] == 7.0 and row["wall_s"] == 2.5  # first window: compilation
  tables.write_csv([row], str(tmp_path / "r.csv"))
  header, line = open(tmp_path / "r.csv").read().splitlines()
  assert header.endswith(",eval/arc_easy/acc,error") and line.endswith(",0.5,")
