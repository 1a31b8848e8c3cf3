"""Progress (a tqdm bar per rank) and the summary across ranks at the end of the job."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def bar(rank: int, world: int, todo: int, stream=None, enabled: bool = True):
    """Rows embedded by this rank (count, rate, elapsed) with the units it finished; on a terminal redrawn in place,
    in a log every 30 s. `todo`: the units left for the whole job (shared by the ranks)."""
    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    desc = f"[rank {rank}/{world}] embedding" if world > 1 else "embedding"
    return tqdm(total=None, unit=" rows", desc=desc, file=stream, disable=not enabled, mininterval=0.5 if tty else 30,
                dynamic_ncols=tty, postfix={"units": f"0 (job: {todo} left)"})


def summary_lines(stats: list[dict]) -> list[str]:
    """One line per rank and the total: rows, skipped, units written, rows/s, time waiting for input."""
    lines = [f"{'rank':>6} {'rows':>10} {'skipped':>8} {'units':>6} {'rows/s':>9} {'input wait':>10}"]

    def line(name, rows, skipped, units, seconds, wait):
        rate = rows / seconds if seconds > 0 else 0.0
        pct = 100 * wait / seconds if seconds > 0 else 0.0
        return f"{name:>6} {rows:>10,} {skipped:>8,} {units:>6} {rate:>9,.1f} {pct:>9.0f}%"

    for r, s in enumerate(stats):
        lines.append(line(str(r), s["rows"], s["skipped"], s["units"], s["seconds"], s["wait"]))
    if len(stats) > 1:  # the job's rate over its longest rank; input wait as the share of all ranks' time
        lines.append(line("all", sum(s["rows"] for s in stats), sum(s["skipped"] for s in stats),
                          sum(s["units"] for s in stats), max(s["seconds"] for s in stats),
                          sum(s["wait"] for s in stats) * max(s["seconds"] for s in stats)
                          / max(1e-9, sum(s["seconds"] for s in stats))))
    return lines
