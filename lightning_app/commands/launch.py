"""``python -m lightning_app launch [OPTIONS] -- fit|sweep ARGS...``: start the training on Kaggle; each session
starts the next until the work is done.

Run it where the credentials are (a laptop, a CI job, a notebook). It takes the command apart (``launch/command.py``:
the files it names go along), publishes the project's code to ``OWNER/SLUG-code`` when it changed, writes the
generated kernel (``kernels/SLUG/``: ``kernel-metadata.json`` and the script) and pushes it:

- a kernel that does not exist yet is only saved (Quick Save): it has no Secrets, and its first session could not
  publish. Attach them once (the line printed says where), then run the same command again: exit 3;
- a kernel with a run queued or running: nothing is started: exit 3;
- otherwise its next version runs at once: exit 0.

``--status`` prints every session of the chain (0 finished, 3 in progress or paused, 2 unknown kernel); ``--stop``
writes the stop file, so that no session pushes another (``--now``: also cancel the running one, which no Kaggle
client can do: the line says where to do it). Bad input is one line and exit 2; a push that still fails after the
retries is exit 1. See ``docs/launch.md``.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lightning_app.commands import CommandParser, one_line_errors
from lightning_app.errors import ConfigError, bad_value
from lightning_app.launch.accelerators import ACCELERATORS, DEFAULT_ACCELERATOR, machine_shape
from lightning_app.launch.chain import ChainStore
from lightning_app.launch.plan import LONGEST_KERNEL_SLUG, Plan, chain_datasets
from lightning_app.launch.retries import retried
from lightning_app.persistence.kaggle.names import check_kernel
from lightning_app.persistence.store import AuthError, StoreError

#: Where the generated kernel is written (under the current folder), one folder per kernel slug.
KERNELS_FOLDER = Path("kernels")
EXIT_STARTED, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOTHING_STARTED = 0, 1, 2, 3


def _parser() -> CommandParser:
    parser = CommandParser(
        prog="python -m lightning_app launch",
        usage="%(prog)s [OPTIONS] -- fit|sweep ARGS...\n       %(prog)s --status | --stop [--now]  --kernel OWNER/SLUG",
        description="Start training on Kaggle; each session starts the next until the work is done.",
        epilog="Example: python -m lightning_app launch -- fit --config configs/kaggle_t4x2.yaml",
    )
    parser.add_argument("--kernel", help="OWNER/SLUG of the script kernel (default: yours, named after the run)")
    parser.add_argument(
        "--accelerator",
        default=DEFAULT_ACCELERATOR,
        help=f"Kaggle's machine shape (default {DEFAULT_ACCELERATOR}: GPU T4 x2); one of: {', '.join(ACCELERATORS)}",
    )
    parser.add_argument(
        "--keep_quota", default=0.0, type=float, metavar="HOURS", help="weekly GPU hours the chain leaves unused"
    )
    parser.add_argument("--status", action="store_true", help="print every session of the chain of --kernel")
    parser.add_argument("--stop", action="store_true", help="the running session of --kernel starts no other")
    parser.add_argument(
        "--now", action="store_true", help="with --stop: also end the running session (says where: no API can)"
    )
    return parser


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, words = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, None)
    if any(arg in ("-h", "--help") for arg in own):
        _parser().print_help()
        return 0
    options = _parser().parse_args(own)
    if options.now and not options.stop:
        raise ConfigError("--now: goes with --stop")
    try:
        if options.status or options.stop:
            return _status_or_stop(options)
        if words is None:
            raise ConfigError(
                "launch: expected `-- fit ARGS...` or `-- sweep ARGS...` after its own options (or --status / "
                "--stop with --kernel OWNER/SLUG)"
            )
        return _launch(options, words, argv)
    except AuthError as error:
        raise ConfigError(f"launch: {error}") from None
    except StoreError as error:
        print(f"error: launch: {error} (after {_attempts()} attempts); nothing was started", file=sys.stderr)
        return EXIT_FAILED


def _attempts() -> int:
    from lightning_app.launch import retries

    return retries.ATTEMPTS


def _status_or_stop(options) -> int:
    if not options.kernel:
        raise ConfigError(f"--{'status' if options.status else 'stop'}: needs --kernel OWNER/SLUG")
    check_kernel("--kernel", options.kernel)
    _owner_must_match(options.kernel)
    if options.status:
        from lightning_app.launch.report import chain_report

        report = chain_report(options.kernel)
        print("\n".join(report.lines))
        return report.exit_code
    from lightning_app.persistence.kaggle.kernels import KaggleKernels

    kernels = KaggleKernels(options.kernel)
    if not retried(kernels.state, "kernel state").exists:
        raise ConfigError(f"--kernel: got {options.kernel!r}; no such kernel of the logged-in user on Kaggle")
    datasets = chain_datasets(options.kernel)
    retried(lambda: ChainStore(datasets["chain"], datasets["stop"]).write_stop(options.now), "writing the stop file")
    print(f"Stop written ({datasets['stop']}): the running session of {options.kernel} finishes and starts no other.")
    if options.now:
        print(
            "--now: no Kaggle client can cancel a running session (the API offers no such call): cancel it on "
            f"{kernels.url} (Cancel run); its published checkpoints are kept."
        )
    return EXIT_STARTED


def _owner_must_match(kernel: str) -> str:
    """The logged-in user, who must own ``kernel``."""
    user = _username()
    owner = kernel.split("/")[0]
    if owner.lower() != user.lower():
        raise ConfigError(f"--kernel: got {kernel!r}; the credentials are {user}'s: a chain runs in your own kernel")
    return user


def _username() -> str:
    from lightning_app.persistence.kaggle.credentials import NO_CREDENTIALS_ADVICE, find_credentials
    from lightning_app.persistence.kaggle.store import login_username

    credentials = find_credentials()
    if credentials is None:
        raise ConfigError(f"launch: no Kaggle credentials found: {NO_CREDENTIALS_ADVICE}")
    user = credentials.username or retried(login_username, "logging in")
    if not user:
        raise ConfigError(f"launch: the credentials from {credentials.source} name no user")
    return user


def _launch(options, words: list[str], argv: list[str]) -> int:
    from lightning_app.launch.code_bundle import CODE_FILE, build_bundle, publish_bundle
    from lightning_app.launch.command import prepare
    from lightning_app.launch.pushing import push_session
    from lightning_app.persistence.folder import MANIFEST_NAME
    from lightning_app.persistence.kaggle.kernels import KaggleKernels, PushRefused
    from lightning_app.persistence.kaggle.store import KaggleDatasetStore, read_newest

    shape = machine_shape(options.accelerator)
    if not options.keep_quota >= 0:
        raise bad_value("--keep_quota", options.keep_quota, "hours >= 0")
    user = _username()
    prepared = prepare(words, user)
    kernel = options.kernel or f"{user}/{prepared.default_slug}"
    check_kernel("--kernel", kernel, LONGEST_KERNEL_SLUG)
    _owner_must_match(kernel)
    kernels = KaggleKernels(kernel)
    state = retried(kernels.state, "kernel state")
    status_command = f"python -m lightning_app launch --status --kernel {kernel}"
    if state.exists and state.active:
        print(
            f"Nothing started: a run of {kernel} is already {state.status.lower()} (Kaggle: {state.status}). "
            f"Follow it: {status_command}"
        )
        return EXIT_NOTHING_STARTED
    datasets = chain_datasets(kernel)
    looked = {datasets["code"]: CODE_FILE, **({prepared.checkpoints: MANIFEST_NAME} if prepared.checkpoints else {})}
    newest = retried(lambda: read_newest(looked), "looking at the datasets")
    work = Path(tempfile.mkdtemp(prefix="launch-code-"))
    try:
        bundle = build_bundle(prepared.files, work)
        code_store = KaggleDatasetStore(datasets["code"])
        version, published = retried(lambda: publish_bundle(bundle, code_store, newest[datasets["code"]]), "code")
        print(f"Code: {datasets['code']} version {version} ({'published' if published else 'unchanged'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # The run's dataset is attached once it exists (the first session creates it; the sessions after attach it).
    sources = [datasets["code"]] + ([prepared.checkpoints] if newest.get(prepared.checkpoints) else [])
    launch_words = argv if options.kernel else ["--kernel", kernel, *argv]
    plan = Plan(
        kernel=kernel,
        command=prepared.command,
        args=tuple(prepared.args),
        checkpoints=prepared.checkpoints,
        accelerator=shape,
        keep_quota_hours=float(options.keep_quota),
        wheel=bundle.wheel,
        launch_command=shlex.join(["python", "-m", "lightning_app", "launch", *launch_words]),
        launched_at=time.time(),
    )
    folder = KERNELS_FOLDER / plan.slug
    try:
        pushed = push_session(plan, kernels, folder, sources, quick_save=not state.exists)
    except PushRefused as refused:
        if refused.reason == "name":
            raise ConfigError(f"--kernel: got {kernel!r}; {refused}") from None
        print(f"Nothing started: {refused}. Follow the chain: {status_command}")
        return EXIT_NOTHING_STARTED if refused.reason in ("quota", "sessions") else EXIT_FAILED
    if pushed.invalid_sources:
        print(f"Kaggle did not attach {', '.join(pushed.invalid_sources)} (not visible to you?)")
    if not state.exists:
        print(
            f"Saved {kernel} (version {pushed.version}, written to {folder}) without running it: a new kernel has no "
            "Secrets yet, and its first session could not publish.\n"
            f"One step, once: open {kernels.url}/edit (the kernel's settings: Add-ons -> Secrets) and attach the "
            "Secret KAGGLE_API_TOKEN (or KAGGLE_USERNAME and KAGGLE_KEY); then run the same command again."
        )
        return EXIT_NOTHING_STARTED
    print(
        f"Started {kernel} version {pushed.version} ({kernels.url}): each session resumes `{plan.command}` and "
        f"starts the next until the work is done.\nFollow it: {status_command}\n"
        f"Stop it: python -m lightning_app launch --stop --kernel {kernel}"
    )
    return EXIT_STARTED
