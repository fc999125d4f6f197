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

