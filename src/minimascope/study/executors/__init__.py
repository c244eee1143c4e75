"""Executors: they decide where and when each node runs; :mod:`..tasks` decides what running it means.

Each has ``execute(state, study_dir, **options)``: it runs every node of ``state`` that is not
finished, dependencies first, and tells ``state`` of every start, epoch and result. Only the
driver (the process that called ``execute``) writes ``study.json``.
"""

EXECUTORS = ("local", "ray")
