"""Train one model with one algorithm; writes a results folder.

  python train.py --config=configs/default.py [--config.FIELD=VALUE ...]

The fields and their meaning are documented in configs/default.py and the
README. Bad input (unknown field, wrong type, unknown algorithm/model/dataset,
missing data folder, bad numbers) exits with code 2 and a one-line error.
"""

from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

flags.DEFINE_boolean("print_summary", True, "Print summary.json when the run ends.")


def fail(message: str) -> None:
    print(f"train.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse(argv: list[str]):
    """Parse the flags; any bad flag or config value becomes one line and exit 2.

    The config flag is defined here, not at import, because ml_collections
    applies ``--config.*`` overrides while defining it.
    """
    try:
        config = config_flags.DEFINE_config_file(
            "config", "configs/default.py", "Path to a config file defining get_config().")
        flags.FLAGS(argv)
        return config.value
    except (flags.Error, KeyError, TypeError, ValueError, AttributeError, OSError) as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        if isinstance(e, (KeyError, AttributeError)):
            fail(f"unknown config field {lines[0].strip(chr(34) + chr(39))!r} (see configs/default.py for the fields)")
        if isinstance(e, OSError):
            fail(f"cannot load the config file given by --config ({lines[0]})")
        fail(lines[0])


def restrict_cpus(count: int) -> None:
    """Pin the process to ``count`` CPUs before JAX starts its thread pools.

    XLA sizes its intra-op pools from the allowed CPUs, so this is the knob
    that makes m workers occupy about m cores (XLA flags did not).
    """
    allowed = sorted(os.sched_getaffinity(0))
    if count > len(allowed):
        raise ValueError(f"cpus={count} but only {len(allowed)} CPUs are available")
    os.sched_setaffinity(0, allowed[:count])


def main(argv: list[str]) -> int:
    cfg = parse(argv)
    from asgd.executors.base import RunAborted
    try:
        from asgd.run import train, validate
        validate(cfg)
        if cfg.cpus:
            restrict_cpus(cfg.cpus)
        summary = train(cfg)
    except ValueError as e:  # bad config values, data, step-size parameters
        fail(str(e).splitlines()[0])
    except RunAborted as e:  # e.g. the Ray parameter server died; the results folder is written
        print(f"train.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    if flags.FLAGS.print_summary:
        keys = ("run_dir", "algorithm", "threads", "updates", "wall_time_s", "updates_per_s",
                "eval_loss", "eval_accuracy", "staleness_mean", "staleness_max", "cas_failures",
                "dropped_updates", "peak_live_buffers", "stop_reason", "time_to_target")
        for key in keys:
            if key in summary:
                value = summary[key]
                print(f"{key:>18}: {value:.4g}" if isinstance(value, float) else f"{key:>18}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
