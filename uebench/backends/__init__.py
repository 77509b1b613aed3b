"""The places the runner's tasks run, one module each: ``loky`` (worker processes on this
machine) and ``ray`` (a Ray cluster). What they share, and the choice between them, is
:mod:`uebench.workers`."""
