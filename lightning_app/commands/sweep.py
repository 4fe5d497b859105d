"""``python -m lightning_app sweep [fit options] --sweep.grid KEY=V1,V2,...``: every trial of a grid, trained to its end
across sessions by ordinary ``fit --resume`` processes, then compared in a published report.

Run the same command every session: finished trials are skipped, the ones in progress resume (bit for bit, as
``fit --resume``), the ones not begun start, until all are finished or the session's time is spent. The sweep's
detail is in ``docs/sweep.md``; its parts are in `lightning_app.sweep`.

Exit status: 0 every trial finished; 3 trials remain and every trial that ran stopped cleanly (the budget, a
SIGTERM); 2 bad input, or a trial exited 2 (its line repeated); 1 a trial crashed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_app.commands import one_line_errors

log = logging.getLogger("lightning_app.sweep")

HELP = """usage: python -m lightning_app sweep [fit options] --sweep.grid KEY=V1,V2,... [--sweep.grid ...]
                                   [--sweep.parallel auto|N] [--sweep.name NAME] [--sweep.report true]

Train every setting of a grid with `fit --resume`, one trial each, across sessions; then publish the comparison.
Every fit option is common to all trials (python -m lightning_app fit --help lists them), except --sync.dataset
and --name, which the sweep sets for each trial.

  --sweep.grid KEY=V1,V2,...  a fit option and its values (comma-separated); repeat for more keys: the trials are
                              the product, the first key varying slowest. In a config: sweep: {grid: {KEY: [V1, V2]}}
  --sweep.parallel auto|N     trials at once (auto: one per GPU with two or more GPUs, else 1); with N > 1 each trial
                              gets one device (on CPU: cores // N threads)
  --sweep.name NAME           the report's dataset is <owner>/NAME-report (default: sweep-<8 hex of the settings>)
  --sweep.report true         write and publish the report of the trials finished so far, without training

Each trial: run name <experiment>-<8 hex of its grid values>, folder <checkpoint.dirpath>/<trial>/, logs
logs/lm/<trial>/ (its output also in logs/sweep/<trial>.log), dataset <owner>/<trial>. The report: ./sweep-report/.
Exit status: 0 all finished; 3 trials remain (time spent, SIGTERM); 2 bad input or a trial exited 2; 1 a crash.
Details: docs/sweep.md.

  python -m lightning_app sweep --config configs/sweep.yaml
  python -m lightning_app sweep --config configs/smoke.yaml --sweep.grid model.lr=0.001,0.003 --sweep.parallel 2"""

#: Where the sweep keeps what is its own: copies of config files without their ``sweep:`` section, trials' output.
SWEEP_LOGS = Path("logs") / "sweep"


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; returns its exit status (see the module's docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
        print(HELP)
        return 0
    from lightning_app.commands.fit import quiet_third_parties

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_third_parties()
    from lightning_app.sweep.runner import SweepRunner

    return SweepRunner.prepare(argv, SWEEP_LOGS).run()


if __name__ == "__main__":
    raise SystemExit(main())
