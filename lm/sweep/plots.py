"""curves.png: eval (and train) loss against step per grid point, mean and ±1 std over seeds.

Needs matplotlib (`pip install -e '.[sweep]'`); without it the report is written without the
figure and says so.
"""
import statistics

from lm.sweep import tables


def group_curve(members: list[dict], key: str) -> tuple[list, list, list]:
  """Steps logged by every run of a group, the mean loss and its std at each (std 0 for one run)."""
  curves = [dict(r["curves"][key]) for r in members if r["curves"][key]]
  if not curves:
    return [], [], []
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  mean = [statistics.mean(c[s] for c in curves) for s in steps]
  std = [statistics.stdev(c[s] for c in curves) if len(curves) > 1 else 0.0 for s in steps]
  return steps, mean, std


def figure(rows: list[dict]):
  """A matplotlib Figure (no pyplot, no backend switch): eval and train loss per grid point."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(12, 4.5))
  axes = fig.subplots(1, 2)
  for (values, members), color in zip(tables.groups(rows), _colors()):
    finished = [r for r in members if r["status"] == "done"] or members
    label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items()) or "all"
    for ax, key in zip(axes, ("eval/loss", "train/loss")):
      steps, mean, std = group_curve(finished, key)
      if not steps:
        continue
      ax.plot(steps, mean, color=color, marker=".", label=f"{label} (n={len(finished)})")
      ax.fill_between(steps, [m - s for m, s in zip(mean, std)],
                      [m + s for m, s in zip(mean, std)], color=color, alpha=0.2)
  for ax, title in zip(axes, ("eval loss", "train loss")):
    ax.set_xlabel("step")
    ax.set_ylabel(title)
    ax.set_title(f"{title} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def write_curves(rows: list[dict], path: str) -> bool:
  """Draws curves.png; False (and no file) when matplotlib is missing."""
  try:
    fig = figure(rows)
  except ImportError:
    print("note: no curves.png (matplotlib missing: pip install -e '.[sweep]')")
    return False
  fig.savefig(path, dpi=100, metadata={"Software": None})
  return True


def _colors():
  i = 0
  while True:
    yield f"C{i % 10}"
    i += 1
