"""asgd: shared-memory asynchronous parallel SGD for systems research.

One module per concept (see the README's layout section):
  run         the config boundary: parse a train config into specs, run it
  specs       the typed, frozen description of a run
  data        datasets (embedded digits, raw IDX/CIFAR files, tfds)
  models      pure-JAX models (init/apply), loss and accuracy
  params      the params pytree <-> one contiguous float32 vector
  problem     data + model + the jitted gradient and evaluation
  stepsize    staleness-adaptive step sizes as optax transforms
  mindthestep MindTheStep's step-size table from a staleness model and a target
  staleness   staleness models (geometric, Poisson, CMP, empirical)
  rules       a step-size spec -> its transform and update rule
  store       the C parameter store (LEASHED / HOGWILD / LOCKED) via cffi
  executors   the algorithms: sequential, sync, lock, hogwild, leashed (and on Ray)
  metrics     the run folder: config.json, metrics.jsonl, summary.json, step_times.npz
  study, aggregate, plots   sweeps, their tables and figures
  dynamics    models of parallel execution: simulator, validation, penalty
"""

__version__ = "0.1.0"

import jax as _jax

# XLA:CPU computations run on the calling thread. With asynchronous dispatch
# (JAX's default) the CPU client runs them on a pool of one thread per CPU:
# a compiled worker loop, which runs until the run stops, holds one of those
# threads for the whole run, so with more workers than CPUs the extra workers
# would never start (an "m = 8" run on 2 cores would be 2 workers with
# staleness 1). On the calling thread, m workers are m OS threads that the
# kernel time-slices, as oversubscription means. JAX reads the flag when its
# CPU backend starts, hence here, at import, before anything is computed.
_jax.config.update("jax_cpu_enable_async_dispatch", False)
