"""Models of parallel execution: how staleness arises and what it costs.

  simulator   discrete-event simulation of m asynchronous workers
              (lock / hogwild / leashed) -> staleness, CAS retries, throughput
  validation  simulated vs measured staleness of a real run
  penalty     SGD with injected staleness: iterations to epsilon vs sequential

Command line: ``python -m asgd.dynamics {simulate,penalty,validate} --help``.
"""

from asgd.dynamics.simulator import (DISCIPLINES, EmpiricalTimes, Exponential, Fixed,
                                     LogNormal, SimResult, parse_dist, simulate)
