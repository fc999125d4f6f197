"""Train one model with one algorithm; writes a results folder.

  python train.py --config=configs/default.py [--config.FIELD=VALUE ...]

The fields and their meaning are documented in configs/default.py and the
README. Bad input (unknown field, wrong type, unknown algorithm/model/dataset,
missing data folder, bad numbers) exits with code 2 and a one-line error.
"""

from __future__ import annotations

import sys

from absl import flags

from asgd.cli import fail, parse_config

PROG = "train.py"

flags.DEFINE_boolean("print_summary", True, "Print summary.json when the run ends.")


def main(argv: list[str]) -> int:
    cfg = parse_config(argv, "configs/default.py", PROG)
    from asgd.executors.base import RunAborted
    try:
        from asgd.run import execute, parse, pin_process
        specs = parse(cfg)
        pin_process(specs)
        summary = execute(specs, cfg.to_dict())
    except ValueError as e:  # bad config values, data, step-size parameters
        fail(PROG, str(e).splitlines()[0])
    except RunAborted as e:  # e.g. the Ray parameter server died; the results folder is written
        print(f"{PROG}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # The executor has already stopped its workers and written summary.json
        # (stop_reason "interrupted") next to the metrics measured so far.
        print(f"{PROG}: interrupted; the results folder holds what was measured", file=sys.stderr)
        return 130
    if flags.FLAGS.print_summary:
        keys = ("run_dir", "algorithm", "threads", "updates", "wall_time_s", "updates_per_s",
                "eval_loss", "eval_accuracy", "staleness_mean", "staleness_max", "cas_failures",
                "dropped_updates", "peak_live_buffers", "stop_reason", "time_to_target")
        for key in keys:
            if key in summary:
                value = summary[key]
                if isinstance(value, dict):  # time_to_target: {target: seconds or None}
                    value = {k: None if v is None else float(f"{v:.4g}") for k, v in value.items()}
                print(f"{key:>18}: {value:.4g}" if isinstance(value, float) else f"{key:>18}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
