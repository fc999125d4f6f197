"""Models of parallel execution: how staleness arises and what it costs.

  simulator   discrete-event simulation of m asynchronous workers
              (lock / hogwild / leashed) -> staleness, CAS retries, throughput
  validation  simulated vs measured staleness of a real run
  penalty     SGD with injected staleness: iterations to epsilon vs sequential
  machine     a P-core machine (cores, GIL, mutex, memory bandwidth, CAS) running m workers
  calibrate   short measurements of this machine for the machine model
  convergence updates to a loss level under injected staleness, on a run's real problem
  predict     predicted runs for m = 1..64 on P cores, validated against real runs here

Command line: ``python -m asgd.dynamics {simulate,penalty,validate,predict} --help``.
"""

from asgd.dynamics.simulator import (DISCIPLINES, EmpiricalTimes, Exponential, Fixed,
                                     LogNormal, SimResult, parse_dist, simulate)
