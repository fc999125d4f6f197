"""The typed description of one run, as ``asgd.run`` hands it down.

``asgd.run.parse`` turns a train config (an ``ml_collections.ConfigDict``)
into these small frozen objects once, after validating every field; the
layers below (problem, executors, monitor, Ray backend, study) take them and
never read the config. Each field has the meaning of the config field of
the same or nearly the same name documented in ``configs/default.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where the examples come from (``asgd.data.load``)."""

    dataset: str
    data_dir: str            # "" = tensorflow-datasets (ignored for digits)
    eval_fraction: float
    split_seed: int
    tfds_download: bool


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model, and the key its parameters are initialised from."""

    name: str                # mlp | cnn | lenet
    options: tuple[tuple[str, Any], ...]  # keyword options of the model's init
    seed: int


@dataclasses.dataclass(frozen=True)
class StepSizeSpec:
    """A staleness-adaptive step-size rule (``asgd.rules`` builds it)."""

    name: str                # constant | inverse | fleet | tail_tau | mindthestep | dc_asgd
    alpha: float             # the base (expected) step size
    threads: int             # m: FLeet's worker count, derived model parameters
    model: str               # MindTheStep's P: poisson | geometric | cmp | empirical
    model_param: float       # <= 0: derived from threads
    target: str              # MindTheStep's Q: uniform | geometric
    target_param: float      # <= 0: derived
    cap: float               # MindTheStep's steps are at most cap * alpha
    tail_amplitude: float    # TAIL-tau's A
    window: int              # warm-up updates (TAIL-tau's CDF, MindTheStep's online fit)
    dc_lambda: float         # DC-ASGD's lambda
    staleness_free: bool = False  # tau is always 0 (sequential, sync, one worker): constant alpha


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer whose state is versioned with the parameters (``asgd.optimizers``)."""

    name: str                # sgd | momentum | nesterov | adam | adamw | rmsprop
    learning_rate: float     # the optimizer's alpha (resolved: > 0; unused for sgd)
    momentum: float          # momentum, nesterov: the trace's decay
    b1: float                # adam, adamw
    b2: float
    eps: float               # adam, adamw, rmsprop
    decay: float             # rmsprop
    weight_decay: float      # adamw


class StopSpec(NamedTuple):
    """The stop conditions; 0 = no limit. ``max_batches`` = epochs x batches per epoch."""

    num_updates: int
    epochs: int
    time_budget_s: float
    target_loss: float


@dataclasses.dataclass(frozen=True)
class RaySpec:
    """Where the Ray backend's actors run (see docs/ray.md)."""

    address: str
    connect_timeout_s: float
    worker_cpus: float
    max_restarts: int
    servers: int = 1          # S: parameter-server shards, each a contiguous slice of the flat vector
    pulls_in_flight: int = 1  # k: asynchronous pulls a worker keeps in flight while it computes


@dataclasses.dataclass(frozen=True)
class ExecutorSpec:
    """Who computes and how they synchronise."""

    algorithm: str           # sequential | sync | lock | hogwild | leashed
    threads: int             # worker threads m (Ray: worker actors)
    persistence: int         # leashed: CAS retries after the first attempt; -1 = until success
    batch_size: int
    seed: int                # minibatch order
    ray: RaySpec | None      # None: threads over shared memory
    worker: str = "compiled"  # compiled: the whole worker loop in XLA | python: a Python loop


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What the monitor measures and when it stops, and where results go."""

    stop: StopSpec
    loss_targets: tuple[float, ...]
    eval_every: int
    log_every: int
    quiet: bool
    workdir: str
    name: str                # the results folder's name after its timestamp
    tensorboard: bool = False  # also write TensorBoard scalars into the run folder


@dataclasses.dataclass(frozen=True)
class Specs:
    """Everything a run needs, validated."""

    data: DataSpec
    model: ModelSpec
    stepsize: StepSizeSpec
    optimizer: OptimizerSpec
    executor: ExecutorSpec
    run: RunSpec
    cpus: int                # pin the process to this many CPUs (-1 = one per worker, 0 = all)
