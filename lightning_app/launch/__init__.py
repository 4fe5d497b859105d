"""``launch``: a training run on Kaggle that goes on by itself, one session after another, until its work is done.

Split by concern:

- ``accelerators.py``  the ``--accelerator`` names (Kaggle's ``machine_shape``) this project offers;
- ``command.py``       the command (``fit``/``sweep``) made to mean the same run in the kernel: files taken along;
- ``code_bundle.py``   the project's wheel and those files, in a private dataset versioned when they change;
- ``plan.py``          what one pushed session does (`Plan`, written into its script; no credential);
- ``script.py``        the generated kernel: ``kernel-metadata.json`` and the script that installs and runs;
- ``pushing.py``       one push of a session, retried without ever queuing a second run;
- ``chain.py``         the chain's status (``OWNER/SLUG-chain``) and the stop file (``OWNER/SLUG-stop``);
- ``decision.py``      what a session decides at its end: finished, the next session, or a pause (pure);
- ``kernel_session.py`` a session inside the kernel: wait for the previous one, run, publish, decide;
- ``report.py``        ``launch --status``: every session of the chain, and what comes next.

The command is ``lightning_app/commands/launch.py``; the kernel calls are in ``lightning_app/persistence/kaggle``
(``kernels.py``). See ``docs/launch.md``.
"""
