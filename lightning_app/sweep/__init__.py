"""``python -m lightning_app sweep``: every setting of a grid trained to its end, across sessions, compared.

A sweep composes ``fit``; it never reimplements it. Each trial is an ordinary ``fit --resume`` process with its own
name, folder, logs and dataset, so everything ``fit`` guarantees holds for it (exact resume, publishing, the
deadline). The sweep keeps no store of its own for checkpoints: it learns where each trial stands where
``--resume`` looks (the trial's folder, the attached inputs, the trial's dataset) from the manifests' ``global_step``
and ``total_steps``, so its view and the checkpoints can never disagree.

The concerns, one module each:

- `grid`: the ``--sweep.*`` options and the grid (its keys, its values, the trials' order and hashes);
- `plan`: each trial checked with ``fit``'s own parser, named, and given its command line;
- `state`: where each trial stands, read from its folder, the inputs and its dataset;
- `scheduler`: the trials run as child processes, within the session's budget, on the devices there are;
- `report`: the curves, the lengths table and the README, published as the sweep's own small dataset;
- `table`: the table of trials printed at the start and at the end;
- `runner`: one session of a sweep, from its command line to its exit status.

The user's guide is ``docs/sweep.md``.
"""
