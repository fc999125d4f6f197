"""asgd: shared-memory asynchronous parallel SGD for systems research.

Modules, one per concept:
  models      pure-JAX models (init/apply), loss and accuracy
  params      the params pytree <-> one contiguous float32 vector
  data        datasets (embedded digits, raw IDX/CIFAR files, tfds)
  store       the C parameter store (LEASHED / HOGWILD / LOCKED) via cffi
  executors   the algorithms: sequential, sync, lock, hogwild, leashed
  staleness   staleness models (geometric, Poisson, CMP, empirical)
  stepsize    staleness-adaptive step sizes as optax transforms
  metrics     per-run results folder: config.json, metrics.jsonl, summary.json
"""

__version__ = "0.1.0"
