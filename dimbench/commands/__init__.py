"""The ``dimbench`` commands, one module per group of commands. The rule:

- every ``dimbench <command>`` is in ``dimbench/commands/<group>.py``: its parser and its ``cmd_<command>``
  function, and nothing else defines a command. Each module has the same registration function,
  ``add_commands(subparsers)``, which adds its commands to the ``dimbench`` parser; each leaf parser sets
  ``func`` to the ``cmd_*`` function that runs it and returns the exit status;
- :mod:`dimbench.cli` builds the parser from the list of these modules (their order is the order of
  ``dimbench --help``), handles the global ``--plugin`` and maps errors to exit statuses; :mod:`dimbench.__main__`
  is ``python -m dimbench``;
- only ``dimbench.cli``, ``dimbench.__main__`` and ``dimbench.commands.*`` may use the console
  (:mod:`dimbench.console`); library code raises the errors of :mod:`dimbench.errors` and the commands print them.

tests/test_architecture.py checks all three. The parser is built on every ``dimbench`` call, ``--help`` included:
a command module imports its implementation (torch, the models) inside its functions, never when it loads (the
train, profile, gate and fid parsers still read defaults from their library when they are built).

    run.py         run, validate
    info.py        list, schema, env
    report.py      report
    train.py       train (also under torchrun)
    profile.py     profile
    gate.py        gate, baseline
    fid.py         fid-stats, fid (also under torchrun)
    cluster.py     status, collect (``run --launcher slurm`` is run's)
    checkpoint.py  checkpoint convert, checkpoint inspect
"""
