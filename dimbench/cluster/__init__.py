"""Beyond one machine: a suite as one array job (SLURM, or submitit's local executor), a task per point or per
small group of points, each running the same worker code as a local run and writing its own shard of rows; the
runner on the submitting machine merges the shards into results.jsonl with a local run's guarantees.

    options.py    the suite's ``slurm:`` section and the ``dimbench run`` options over it
    launcher.py   submit the incomplete points as one array, follow it, merge as rows arrive
    task.py       what runs on a node: the task's points through the runner and its workers, into its shard
    records.py    the folder's cluster records (submissions, task records, shards); a live array holds the folder
    scheduler.py  asking SLURM (squeue, sacct) or the local executor about a task
    merge.py      shards -> results.jsonl, each row once
    collect.py    ``dimbench collect OUT`` (and what every run does first in such a folder)
    status.py     ``dimbench status OUT``
    cli.py        the commands

Nothing here is imported by a local run beyond its first look at the folder (records, collect).
"""
