"""The algorithms on a Ray cluster: a parameter-server actor and m worker actors.

Selected by ``config.backend = "ray"``; ``config.threads`` is the number of
worker actors. See docs/ray.md for the cluster commands.

  address  fail fast on an unreachable cluster (before data loads or Ray starts)
  server   the parameter-server actor: the C store, the tickets, the workers' logs
  worker   the worker actor: pull -> gradient -> push
  driver   starts the actors, supervises restarts, runs the local monitor
"""

from asgd.executors.base import RunAborted

ALGORITHMS = ("sync", "lock", "hogwild", "leashed")


class RayBackendError(ValueError):
    """Bad input for the Ray backend (Ray missing, address unreachable, too few CPUs)."""


class ParameterServerDied(RunAborted):
    """The parameter-server actor died; the results folder holds what was measured."""
