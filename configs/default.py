"""The embedded offline default: an MLP on scikit-learn's digits, 2 threads.

Runs in well under a minute on 2 cores. Every field is documented here; each
can be overridden from the command line, e.g.
  asgd-train --config.algorithm=hogwild --config.threads=4
  python train.py --config=configs/default.py --config.algorithm=sequential
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = ""                   # run name in the results folder's name ("" = <algorithm>-m<threads>-<stepsize>
                                  # and, where not the default, -lr<learning_rate>, -p<persistence>, -s<seed>)

    # Data.
    c.dataset = "digits"          # digits | mnist | fashion_mnist | cifar10
    c.data_dir = ""               # folder of raw IDX / CIFAR-10 binary files; "" = tensorflow-datasets
    c.eval_fraction = 0.2         # share held out for eval when the source has one split only
    c.split_seed = 0              # seed of that hold-out split
    c.tfds_download = False       # let tensorflow-datasets download (needs network)

    # Model.
    c.model = "mlp"               # mlp | cnn | lenet
    c.mlp_hidden = (128, 128, 128)  # hidden layer widths of the MLP

    # Algorithm.
    c.algorithm = "leashed"       # sequential | sync | lock | hogwild | leashed
    c.threads = 0                 # worker threads m (backend ray: worker actors); 0 = 1 for sequential, else 2
    c.persistence = -1            # leashed: CAS retries after the first attempt; -1 = until success
    c.cpus = -1                   # pin the process to this many CPUs before JAX starts: -1 = one per worker
                                  # (min(threads, available)), 0 = all allowed, N = N
    c.worker = "compiled"         # compiled: each worker's whole loop inside one XLA computation (no Python
                                  # per step) | python: a Python loop per step (DC-ASGD and sync always are)

    # Where the workers run (see docs/ray.md).
    c.backend = "local"           # local: threads over shared memory | ray: worker actors + a parameter-server actor
    c.ray_address = ""            # ray: "" starts a local Ray; "auto" joins the cluster of this node; or host:port
    c.ray_connect_timeout_s = 5.0  # ray: seconds to reach ray_address before failing
    c.ray_worker_cpus = 1.0       # ray: CPUs each worker actor reserves (threads * this must fit the cluster)
    c.ray_max_restarts = 3        # ray: times Ray restarts a dead worker actor, which then rejoins
    c.ray_servers = 1             # ray: S parameter-server shards (contiguous slices of the flat vector), 1..64
    c.ray_pulls_in_flight = 1     # ray: k asynchronous pulls a worker keeps in flight while it computes, 1..8

    # Optimisation.
    c.batch_size = 32             # minibatch size
    c.learning_rate = 0.05        # alpha: the base step size
    c.stepsize = "constant"       # constant | inverse | fleet | tail_tau | mindthestep | dc_asgd (sequential, sync, m = 1: all are alpha)
    c.stepsize_model = "fitted"   # mindthestep's staleness model P: fitted (best of geometric/poisson/cmp by AIC, refitted online) | poisson | geometric | cmp | empirical
    c.stepsize_model_param = 0.0  # > 0 fixes P (Poisson/CMP lam, geometric p); <= 0 fits the family online from this run's staleness
    c.stepsize_target = "tilted"  # mindthestep's target Q (the variant): tilted (P e^-theta tau) | uniform | geometric; see docs/mindthestep.md
    c.stepsize_target_param = 0.0  # tilted theta, uniform T or geometric mu; <= 0 derives it (FLeet's beta(m), P's 99% quantile, 1-1/m)
    c.stepsize_cap = 2.0          # mindthestep steps are at most stepsize_cap * learning_rate (>= 1; 2: no fresh step expands the error at alpha <= 1/L)
    c.tail_amplitude = 0.5        # TAIL-tau's amplitude A in [0, 1) (A < 1: no step is 0)
    c.stepsize_window = 0         # TAIL-tau's CDF window (<= 0: 1000); mindthestep's updates between online refits (<= 0: 100)
    c.dc_lambda = 0.1             # DC-ASGD's delay-compensation strength lambda
    c.optimizer = "sgd"           # sgd | momentum | nesterov | adam | adamw | rmsprop: state versioned with the
                                  # parameters; the step size scales its learning rate (docs/optimizers.md)
    c.optimizer_learning_rate = 0.0  # the optimizer's alpha, in place of learning_rate (0 = its usual default:
                                  # momentum, nesterov 0.01; adam, adamw, rmsprop 0.001)
    c.optimizer_momentum = 0.9    # momentum, nesterov: decay of the momentum trace
    c.optimizer_b1 = 0.9          # adam, adamw: decay of the first moment
    c.optimizer_b2 = 0.999        # adam, adamw: decay of the second moment
    c.optimizer_eps = 1e-8        # adam, adamw, rmsprop: added to the root of the second moment
    c.optimizer_decay = 0.9       # rmsprop: decay of the squared-gradient average
    c.optimizer_weight_decay = 1e-4  # adamw: decoupled weight decay
    c.seed = 0                    # model init and minibatch order

    # Stopping: the first condition reached ends the run (0 = no limit).
    c.num_updates = 3000          # applied updates
    c.epochs = 0                  # passes over the training set
    c.time_budget_s = 0.0         # wall-clock seconds
    c.target_loss = 0.0           # running-mean training loss

    # Measurement.
    c.loss_targets = (0.5, 0.2, 0.1)  # training-loss levels whose time to reach is reported
    c.eval_every = 500            # updates between evaluations of a consistent snapshot
    c.log_every = 100             # updates between metrics.jsonl lines
    c.workdir = "."               # results go to <workdir>/runs/<timestamp>-<name>/
    c.quiet = False               # no progress bar
    c.tensorboard = False         # also write TensorBoard scalars into the run folder (pip install -e '.[tensorboard]')
    return c
