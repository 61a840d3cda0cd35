"""The sweep's tables: results.csv (one row per run) and results.md (runs, then seeds averaged)."""
import csv
import statistics

# (row key, column title, Markdown format) of the numeric columns.
COLUMNS = [("train_loss", "final train loss", ".4f"),
           ("eval_loss_best", "best eval loss", ".4f"),
           ("eval_loss_final", "final eval loss", ".4f"),
           ("tokens_per_sec", "tokens/s", ",.0f"),
           ("params", "params", ",d"),
           ("wall_s", "wall s", ".0f")]
AVERAGED = ("train_loss", "eval_loss_best", "eval_loss_final", "tokens_per_sec", "wall_s")


def grid_names(rows: list[dict]) -> list[str]:
  """Every grid binding of the runs, in first-seen order."""
  names = []
  for r in rows:
    names += [k for k in r["point"] if k not in names]
  return names


def extra_names(rows: list[dict]) -> list[str]:
  """The eval-task columns (eval/<task>/<metric>) any run reported, sorted."""
  return sorted({k for r in rows for k in r["extra"]})


def is_seed(name: str) -> bool:
  """Bindings averaged over in the grouped table: SEED, or any `*.seed`."""
  return name.rsplit(".", 1)[-1].lower() == "seed"


def write_csv(rows: list[dict], path: str):
  """One line per run: name, grid values, status, metrics, eval-task columns, error."""
  grid, extra = grid_names(rows), extra_names(rows)
  header = (["name"] + grid + ["status", "step", "steps"] + [k for k, _, _ in COLUMNS] + extra
            + ["error"])
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    for r in rows:
      w.writerow([r["name"]] + [_csv(r["point"].get(g)) for g in grid]
                 + [r["status"], r["step"], _csv(r["steps"])]
                 + [_csv(r[k]) for k, _, _ in COLUMNS] + [_csv(r["extra"].get(e)) for e in extra]
                 + [r["error"]])


def groups(rows: list[dict]) -> list[tuple[dict, list[dict]]]:
  """Runs grouped by their non-seed grid values, in first-seen order."""
  keys = [g for g in grid_names(rows) if not is_seed(g)]
  out = {}
  for r in rows:
    key = tuple(repr(r["point"].get(k)) for k in keys)
    out.setdefault(key, ({k: r["point"].get(k) for k in keys}, []))[1].append(r)
  return list(out.values())


def mean_std(values: list[float]) -> tuple[float, float | None] | None:
  """Mean and sample standard deviation (n - 1); std None for a single value."""
  if not values:
    return None
  return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def markdown(rows: list[dict]) -> str:
  """results.md: the runs table, the grouped table (finished runs' mean ± std over seeds),
  and the failed runs with their error lines."""
  grid, extra = grid_names(rows), extra_names(rows)
  cols = COLUMNS + [(e, e, ".4f") for e in extra]
  lines = ["# Sweep results", "", "## Runs", ""]
  lines += _table(["run"] + grid + ["status", "steps"] + [t for _, t, _ in cols],
                  [[r["name"]] + [_md(r["point"].get(g)) for g in grid]
                   + [r["status"], f"{r['step']}/{r['steps'] or '?'}"]
                   + [_fmt(_value(r, k), spec) for k, _, spec in cols] for r in rows])
  seeds = [g for g in grid if is_seed(g)]
  over = f" over {', '.join(seeds)}" if seeds else ""
  lines += ["", f"## Mean ± std{over} (finished runs)", ""]
  keys = [g for g in grid if not is_seed(g)]
  averaged = [c for c in cols if c[0] in AVERAGED or c[0] in extra]
  body = []
  for values, members in groups(rows):
    done = [r for r in members if r["status"] == "done"]
    body.append([_md(values[k]) for k in keys] + [f"{len(done)}/{len(members)}"]
                + [_fmt_stats(mean_std([_value(r, k) for r in done
                                        if _value(r, k) is not None]), spec)
                   for k, _, spec in averaged])
  lines += _table(keys + ["runs done"] + [t for _, t, _ in averaged], body)
  failed = [r for r in rows if r["status"] == "failed"]
  if failed:
    lines += ["", "## Failed runs", ""] + [f"- `{r['name']}`: {r['error']}" for r in failed]
  return "\n".join(lines) + "\n"


def _value(row: dict, key: str):
  return row["extra"].get(key) if key.startswith("eval/") else row[key]


def _table(header: list[str], body: list[list[str]]) -> list[str]:
  return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
          + ["| " + " | ".join(str(c) for c in row) + " |" for row in body])


def _csv(value):
  return "" if value is None else repr(value) if isinstance(value, float) else value


def _md(value) -> str:
  return "" if value is None else str(value).replace("|", "\\|")


def _fmt(value, spec: str) -> str:
  if value is None:
    return "-"
  return format(round(value) if spec.endswith("d") else value, spec)


def _fmt_stats(stats, spec: str) -> str:
  if stats is None:
    return "-"
  mean, std = stats
  spec = ",.0f" if spec.endswith("d") else spec
  return _fmt(mean, spec) + ("" if std is None else f" ± {_fmt(std, spec)}")
