"""GPU check: one table of what has only been measured on CPU so far, for a session that has a GPU (< 8 min).

- **throughput**: tokens/s of ``fit`` (callbacks on) versus the plain loop, ``small`` and ``base`` in the
  precision ``fit`` picks (`benchmarks.throughput.measure`, one run per arm).
- **checkpoint stall**: training time blocked per checkpoint for ``base``, the project's ``KaggleModelCheckpoint``
  versus a pinned host copy of the same state, and the extra GPU memory of a save (``max_memory_allocated`` delta)
  (`benchmarks.checkpoint_stall.run_arm`).
- **kill + resume**: the real CLI (``configs/smoke.yaml``) SIGKILLed right after its step-10 checkpoint, then
  ``--resume``; compared bit for bit (weights, optimizer state, step, schedule) with an uninterrupted run, with
  ``--trainer.deterministic true`` in ``16-mixed`` and ``bf16-mixed`` (where the GPU has it).
- **non-deterministic spread**: without ``deterministic``, the max abs weight difference between two
  uninterrupted runs, against the resumed run's distance from the first.
- **DDP**: the same kill + resume with 2 ranks, where there are two GPUs.
- **2 ranks -> 1 device**: a 2-rank run SIGKILLed mid-epoch, right after an epoch's checkpoint and half-way
  through writing a checkpoint, each resumed with ``--trainer.devices 1`` (one device running both canonical
  micro-batches), compared bit for bit with the uninterrupted 2-rank run (deterministic): where there are two
  GPUs, and on CPU (gloo) without ``--quick``.

``--device cpu --quick`` runs the same code on CPU in about a minute (tiny model, 20 steps, kill + resume in
``32-true`` only; without ``--quick`` also ``bf16-mixed`` and the 2 ranks -> 1 device kill points).

Usage::

    python -m benchmarks.gpu_check                          # on a GPU machine
    python -m benchmarks.gpu_check --device cpu --quick     # checks that it runs
"""

from __future__ import annotations

import re
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks import checkpoint_stall, throughput
from benchmarks.common import command_line, make_parser, markdown_table, median, parse, precision_for, print_report
from tests.cli_helpers import RESUME_FLAGS, cli_env, fit_args, load, newest_checkpoint, run_in_group
from tests.support.kill_switch import kill_config

KILL_STEP = 10  # smoke.yaml with RESUME_FLAGS checkpoints every 10 steps: killed right after the first one
#: 2 ranks -> 1 device: where the 2-rank run dies (smoke.yaml: 32 steps per epoch on any number of devices) and
#: the step it resumes from.
ELASTIC_KILLS = {
    "mid-epoch": ("KillAfterCheckpoint", 10, 10),
    "epoch end": ("KillAfterCheckpoint", 32, 32),
    "during a write": ("KillDuringCheckpointWrite", 50, 40),  # the torn step-50 file is skipped
}
ELASTIC_EPOCHS = ("--trainer.max_epochs", "2")
HEADERS = ("check", "setting", "result", "detail")


def cli(work: Path, *args: str, timeout: float = 300) -> tuple[int, str]:
    """``fit --config configs/smoke.yaml RESUME_FLAGS args`` in ``work``, its process group killed afterwards."""
    work.mkdir(parents=True, exist_ok=True)
    done = run_in_group(fit_args(*RESUME_FLAGS, *args), work, cli_env(work / "home"), timeout)
    return done.returncode, done.stdout


def difference(a: dict, b: dict, optimizer: bool = True) -> tuple[bool, float]:
    """(bit for bit equal, max abs difference) of two checkpoints: weights, and with ``optimizer`` the optimizer
    state, step, epoch and schedule too (what `tests.cli_helpers.assert_same_training_state` asserts)."""
    pairs = [(value, b["state_dict"][key]) for key, value in a["state_dict"].items()]
    same = a["state_dict"].keys() == b["state_dict"].keys()
    if optimizer:
        same &= all(a[k] == b[k] for k in ("global_step", "epoch", "lr_schedulers"))
        for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
            for index, state in opt_a["state"].items():
                pairs += [(v, opt_b["state"][index][n]) for n, v in state.items() if isinstance(v, torch.Tensor)]
    same &= all(x.shape == y.shape and torch.equal(x, y) for x, y in pairs)
    diff = max(((x.double() - y.double()).abs().max().item() for x, y in pairs if x.numel()), default=0.0)
    return same, diff


def kill_and_resume(
    work: Path, *flags: str, kill: tuple[str, int] = ("KillAfterCheckpoint", KILL_STEP), resume_flags=None
) -> tuple[dict | None, str]:
    """SIGKILL a run at ``kill`` (after its step-10 checkpoint), ``--resume`` it (with ``resume_flags`` instead of
    ``flags`` where given): (its last checkpoint, what happened)."""
    rc, out = cli(work, *flags, "--config", str(kill_config(work.parent, *kill)))
    if rc != -signal.SIGKILL:
        return None, f"killed run exited {rc}: {_tail(out)}"
    rc, out = cli(work, *(flags if resume_flags is None else resume_flags), "--resume")
    match = re.search(r"Resuming from \S+ \(epoch \d+, step (\d+)\)", out)
    if rc != 0 or not match:
        return None, f"resumed run exited {rc}, {'resumed' if match else 'did not resume'}: {_tail(out)}"
    return load(newest_checkpoint(work / "checkpoints")), f"resumed from step {match[1]}"


def _tail(output: str) -> str:
    """The end of a run's output, for a table cell."""
    return repr(output.strip()[-300:]).replace("|", "/")


def uninterrupted(work: Path, *flags: str) -> tuple[dict | None, str]:
    rc, out = cli(work, *flags)
    return (load(newest_checkpoint(work / "checkpoints")), "") if rc == 0 else (None, f"exited {rc}: {_tail(out)}")


def resume_row(check: str, setting: str, tmp: Path, *flags: str) -> list[str]:
    """Kill + resume versus uninterrupted, ``--trainer.deterministic true``: equal or not, and the max abs diff."""
    flags = (*flags, "--trainer.deterministic", "true")
    reference, error = uninterrupted(tmp / "reference", *flags)
    resumed, how = kill_and_resume(tmp / "killed", *flags) if reference else (None, "")
    if reference is None or resumed is None:
        return [check, setting, "failed", error or how]
    same, diff = difference(resumed, reference)
    steps = f"step {resumed['global_step']} vs {reference['global_step']}"
    return [check, setting, "equal" if same else "not equal", f"max abs diff {diff:.3g}, {how}, {steps}"]


def elastic_rows(tmp: Path, two: tuple[str, ...], one: tuple[str, ...]) -> list[list[str]]:
    """A 2-rank run killed at each of `ELASTIC_KILLS` and resumed on one device, against the uninterrupted 2-rank
    run, both ``--trainer.deterministic true``: equal or not, and the max abs diff."""
    check = "2 ranks -> 1 device kill + resume"
    common = (*ELASTIC_EPOCHS, "--trainer.deterministic", "true")
    reference, error = uninterrupted(tmp / "reference", *two, *common)
    if reference is None:
        return [[check, "-", "failed", f"uninterrupted 2-rank run {error}"]]
    rows = []
    for point, (kind, step, resumes_at) in ELASTIC_KILLS.items():
        setting = f"{point} (step {resumes_at})"
        work = tmp / point.replace(" ", "-")
        resumed, how = kill_and_resume(work, *two, *common, kill=(kind, step), resume_flags=(*one, *common))
        if resumed is None:
            rows.append([check, setting, "failed", how])
            continue
        same, diff = difference(resumed, reference)
        exact = same and f"from step {resumes_at}" in how
        detail = f"max abs diff {diff:.3g}, {how}, step {resumed['global_step']} vs {reference['global_step']}"
        rows.append([check, setting, "equal" if exact else "not equal", detail])
    return rows


def spread_row(precision: str, tmp: Path, *flags: str) -> list[str]:
    """Two uninterrupted runs and a resumed one, none deterministic: run-to-run spread vs the resumed distance."""
    first, error = uninterrupted(tmp / "first", *flags)
    second, error2 = uninterrupted(tmp / "second", *flags) if first else (None, "")
    resumed, how = kill_and_resume(tmp / "killed", *flags) if second else (None, "")
    if first is None or second is None or resumed is None:
        return ["non-deterministic spread", precision, "failed", error or error2 or how]
    spread = difference(second, first, optimizer=False)[1]
    distance = difference(resumed, first, optimizer=False)[1]
    return [
        "non-deterministic spread",
        precision,
        f"resumed {distance:.3g} vs run-to-run {spread:.3g}",
        f"max abs weight diff from the first run: second uninterrupted run {spread:.3g}, resumed run {distance:.3g}"
        f" ({how})",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n", 1)[0])
    args = parse(parser, argv)
    device, fit_precision = args.device, precision_for(args.device)
    gpu = device == "cuda"
    name = torch.cuda.get_device_name() if gpu else "CPU"
    rows = [["device", name, f"{torch.cuda.device_count()} GPU(s)" if gpu else "no GPU", torch.__version__]]
    with tempfile.TemporaryDirectory(prefix="bench-gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        for setting in throughput.SETTINGS[(device, args.quick)]:
            _, rates = throughput.measure(setting, device, 1, tmp / "throughput")
            rows.append([
                f"throughput: {setting.size}",
                f"{fit_precision}, {setting.batch_size}x{setting.seq_len}, {setting.steps} steps",
                f"fit / plain {rates['fit'] / rates['plain']:.3f}",
                f"tok/s: plain {rates['plain']:,.0f}, fit {rates['fit']:,.0f}, fit + saves {rates['fit + saves']:,.0f}",
            ])  # fmt: skip

        size, saves = ("tiny", 2) if args.quick else ("base", 4)
        records = {arm: checkpoint_stall.Saves() for arm in ("host copy", "project")}
        for arm, record in records.items():
            checkpoint_stall.run_arm(arm, size, device, saves, 2, tmp / arm.replace(" ", "-"), record)
        blocked = {arm: median(record.blocked) for arm, record in records.items()}
        gpu_mib = {arm: f"{max(r.extra_gpu) / 2**20:.0f} MiB" if gpu else "n/a (CPU)" for arm, r in records.items()}
        rows.append([
            f"checkpoint stall: {size}",
            f"{fit_precision}, {saves - 1} saves after the first",
            f"{blocked['project'] / blocked['host copy']:.2f}x host copy",
            f"blocked s / save: project {blocked['project']:.3f}, pinned host copy {blocked['host copy']:.3f}; "
            f"lost s / save (overlap included): project {records['project'].lost:.3f}, "
            f"host copy {records['host copy'].lost:.3f}; "
            f"extra GPU memory: project {gpu_mib['project']}, host copy {gpu_mib['host copy']}",
        ])  # fmt: skip
        if gpu:
            torch.cuda.empty_cache()  # the CLI runs below are processes of their own

        on = ("--trainer.accelerator", "gpu" if gpu else "cpu", "--trainer.devices", "1")
        on += ("--trainer.max_steps", "20") if args.quick else ()
        precisions = ("16-mixed", "bf16-mixed") if gpu else ("32-true", "bf16-mixed")
        for precision in precisions[:1] if args.quick else precisions:  # bf16 on CPU: tests/end_to_end
            check = "kill + resume, deterministic"
            if precision == "bf16-mixed" and gpu and not torch.cuda.is_bf16_supported():
                rows.append([check, precision, "n/a (no bf16)", ""])
                continue
            rows.append(resume_row(check, precision, tmp / precision, *on, "--trainer.precision", precision))
        rows.append(spread_row(fit_precision, tmp / "spread", *on, "--trainer.precision", fit_precision))

        ddp = ("--trainer.accelerator", "gpu", "--trainer.devices", "2", "--trainer.strategy", "ddp")
        if gpu and torch.cuda.device_count() >= 2:
            rows.append(resume_row("DDP 2 ranks kill + resume", fit_precision, tmp / "ddp", *ddp))
        else:
            rows.append(["DDP 2 ranks kill + resume", "-", "n/a (1 GPU)" if gpu else "n/a (CPU)", ""])
        precision = ("--trainer.precision", fit_precision)
        if gpu and torch.cuda.device_count() >= 2:
            one = ("--trainer.accelerator", "gpu", "--trainer.devices", "1", *precision)
            rows += elastic_rows(tmp / "elastic", (*ddp, *precision), one)
        elif gpu:
            rows.append(["2 ranks -> 1 device kill + resume", "-", "n/a (1 GPU)", ""])
        elif not args.quick:  # on CPU the suite runs the mid-epoch case (tests/end_to_end/test_elastic_resume.py)
            cpu = ("--trainer.accelerator", "cpu", *precision)
            rows += elastic_rows(tmp / "elastic", (*cpu, "--trainer.devices", "2", "--trainer.strategy", "ddp"), cpu)
    notes = [
        "kill + resume: `configs/smoke.yaml` (tiny model) through the CLI, SIGKILLed right after its step-10 "
        "checkpoint, then `--resume`; equal = weights, optimizer state, step, epoch and schedule bit for bit equal "
        "to an uninterrupted run's. non-deterministic spread: the same without `--trainer.deterministic true`. "
        "2 ranks -> 1 device: the same config for 2 epochs, 2 ranks killed at each point and resumed with "
        "`--trainer.devices 1`, against the uninterrupted 2-rank run (equal also requires the resume from the "
        "step named)."
    ]
    print_report(
        f"GPU check: {name}", device, command_line("benchmarks.gpu_check", argv), markdown_table(HEADERS, rows), notes
    )


if __name__ == "__main__":
    main()
