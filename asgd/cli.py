"""The command line: ``asgd-train`` (also ``python train.py``) and the config flags it shares.

  asgd-train [--config=PATH[:ARG]] [--config.FIELD=VALUE ...] [--noprint_summary]

``parse_config`` reads ``--config=path.py --config.FIELD=VALUE`` (ml_collections,
big_vision style) for ``asgd-train`` and ``python -m asgd.study``: ``--config``
defaults to the installed ``asgd/configs/`` file, and a relative path that
does not exist is looked up there too, so ``--config=configs/mnist_mlp.py``
works from any folder. ``--help`` lists every field with its default and
meaning. A bad flag, config file or value is one line on stderr and exit code
2, before anything is written.

``stop_signals`` turns SIGINT and SIGTERM into a clean stop (the run writes
summary.json with stop_reason "interrupted"); a second signal, or one that
arrives while Python shuts down, exits at once and quietly.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import os
import re
import signal
import sys
from typing import Callable

from absl import flags
from ml_collections import config_dict, config_flags

HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")


class CliError(ValueError):
    """A bad command line; the message is the one line to print."""


def fail(prog: str, message: str) -> None:
    """Print ``prog: error: message`` and exit with code 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


# -- config files --------------------------------------------------------------

def installed_config(name: str) -> str:
    """The path of an installed config, e.g. ``installed_config("default.py")``."""
    from asgd import configs
    return os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), name)


def config_path(value: str) -> str:
    """``--config``'s value with its path resolved: as given if it exists, else
    the installed config of the same file name (``configs/mnist_mlp.py`` from
    any folder). A ``:ARG`` suffix (passed to ``get_config``) is kept."""
    path, colon, arg = value.partition(":")
    if not path:
        raise CliError("--config needs a path to a config file")
    if not os.path.exists(path) and not os.path.isabs(path):
        installed = installed_config(os.path.basename(path))
        if os.path.isfile(installed):
            path = installed
    if not os.path.isfile(path):
        raise CliError(f"config file {value.partition(':')[0]!r} not found (the installed configs "
                       f"are in {os.path.dirname(installed_config('default.py'))})")
    return path + colon + arg


def load_config(value: str) -> config_dict.ConfigDict:
    """Import a config file and call its ``get_config``; every failure is a ``CliError``.

    ml_collections defers a broken file's error to the first use of the config
    and prints its traceback; loading it here first gives one line instead.
    """
    path, _, arg = value.partition(":")
    spec = importlib.util.spec_from_file_location("asgd_cli_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise CliError(f"config file {path}: {e.msg} (line {e.lineno})") from None
    except Exception as e:  # whatever a broken config module raises
        raise CliError(f"config file {path} fails to load: {type(e).__name__}: "
                       f"{_first_line(e)}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise CliError(f"config file {path} defines no get_config()")
    try:
        config = get_config(*([arg] if arg else []))
    except Exception as e:
        raise CliError(f"get_config() of {path} failed: {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(config, config_dict.ConfigDict):
        raise CliError(f"get_config() of {path} returned a {type(config).__name__}, "
                       "not an ml_collections.ConfigDict")
    return config


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def check_fields(config: config_dict.ConfigDict, argv: list[str], path: str) -> None:
    """Every ``--config.FIELD=`` override names a field of ``config``; else a
    ``CliError`` with the closest field name."""
    for arg in argv[1:]:
        match = re.match(r"--?config\.([^=\s]+)", arg)
        if not match:
            continue
        node, done = config, []
        for part in match.group(1).split("."):
            if isinstance(node, config_dict.ConfigDict) and part in node:
                node = node[part]
                done.append(part)
                continue
            if not isinstance(node, config_dict.ConfigDict):
                break  # e.g. an index into a tuple: ml_collections decides
            name = ".".join(done + [part])
            close = difflib.get_close_matches(part, list(node.keys()), n=1)
            hint = f"; did you mean {'.'.join(done + close)!r}?" if close else ""
            raise CliError(f"unknown config field {name!r}{hint} (the fields: --help, or {path})")


def _find_config_flag(argv: list[str]) -> tuple[int, int, str] | None:
    """(index, count, value) of ``--config=V`` or ``--config V`` in argv."""
    for i, arg in enumerate(argv[1:], 1):
        match = re.fullmatch(r"--?config=(.*)", arg, flags=re.S)
        if match:
            return i, 1, match.group(1)
        if arg in ("--config", "-config") and i + 1 < len(argv):
            return i, 2, argv[i + 1]
    return None


def parse_config(argv: list[str], default: str, prog: str, doc: str = "",
                 define_flags: Callable[[flags.FlagValues], None] | None = None):
    """Parse ``argv`` into (config, flag values); a bad one is one line and exit 2.

    ``default`` names the installed config used without ``--config``;
    ``define_flags(flag_values)`` adds the command's own flags. ``--help``
    prints ``doc``, the flags and every config field, and exits 0.
    """
    argv = list(argv)
    flag_values = flags.FlagValues()
    if define_flags is not None:
        define_flags(flag_values)
    try:
        found = _find_config_flag(argv)
        value = config_path(found[2]) if found else installed_config(default)
        if found:
            i, count, _ = found
            argv[i:i + count] = [f"--config={value}"]
        if any(arg in HELP_FLAGS for arg in argv[1:]):
            print_help(prog, doc, value, flag_values)
            sys.exit(0)
        check_fields(load_config(value), argv, value.partition(":")[0])
        holder = config_flags.DEFINE_config_file(
            "config", value, "Path to a config file defining get_config().",
            flag_values=flag_values, sys_argv=argv)  # the overrides it defines come from argv
        flag_values(argv)
        config = holder.value
    except CliError as e:
        fail(prog, str(e))
    except KeyError as e:  # str() of a KeyError is the repr of its argument
        fail(prog, _first_line(e).strip("'\""))
    except (flags.Error, TypeError, ValueError, AttributeError, OSError) as e:
        fail(prog, _first_line(e))
    if not flags.FLAGS.is_parsed():  # absl logging warns until the global flags are parsed
        flags.FLAGS.mark_as_parsed()
    return config, flag_values


def field_docs(path: str) -> dict[str, str]:
    """Field name -> the comment beside ``c.FIELD = ...`` in a config file."""
    docs = {}
    with open(path) as f:
        for line in f:
            match = re.match(r"\s*c\.([\w.]+)\s*=.*?#\s*(.+)$", line)
            if match:
                docs[match.group(1)] = match.group(2).strip()
    return docs


def print_help(prog: str, doc: str, value: str, flag_values: flags.FlagValues) -> None:
    """Usage, the command's flags and every field of the config ``value`` names."""
    import asgd
    path = value.partition(":")[0]
    print(doc.strip() or f"usage: {prog} [--config=PATH] [--config.FIELD=VALUE ...]")
    print(f"\nasgd {asgd.__version__} from {os.path.dirname(os.path.abspath(asgd.__file__))}")
    print(f"\nflags:\n  --config=PATH[:ARG]\n      a config file defining get_config() (here: {path});"
          f"\n      a relative path that does not exist is looked up in "
          f"{os.path.dirname(installed_config('default.py'))}")
    for name in sorted(flag_values):
        if name == "config":
            continue
        flag = flag_values[name]
        form = f"--[no]{name}" if isinstance(flag, flags.BooleanFlag) else f"--{name}=VALUE"
        print(f"  {form}\n      {flag.help} (default: {flag.default})")
    print("  --config.FIELD=VALUE\n      override one field of the config; its fields and defaults:")
    try:
        config = load_config(value)
    except CliError as e:
        print(f"      (cannot list them: {e})")
        return
    docs = field_docs(path)
    order = {key: i for i, key in enumerate(docs)}  # the file's order, then the rest
    for key, item in sorted(config.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
        if isinstance(item, config_dict.ConfigDict):
            print(f"    {key}.FIELD  {docs.get(key, '')} (a nested config: {key}.<any of its fields>)")
            continue
        note = f"  # {docs[key]}" if key in docs else ""
        print(f"    {key} = {item!r}{note}")


# -- signals -------------------------------------------------------------------

class _Signals:
    def __init__(self, prog: str):
        self.prog, self.received = prog, None

    def handle(self, signum, frame):
        if self.received is not None:  # a second signal: exit now, quietly
            print(f"{self.prog}: {signal.Signals(signum).name} again: exiting at once",
                  file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.received = signum
        raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals(prog: str):
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread once (the
    run then stops its workers and writes summary.json); a second signal exits
    at once. Yields the state: ``.received`` is the first signal number or None.
    """
    state = _Signals(prog)
    previous = {s: signal.signal(s, state.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def exit_quietly_on_signals() -> None:
    """From now on SIGINT/SIGTERM end the process at once, without tracebacks
    (e.g. from jax's exit handlers while Python shuts down)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda signum, frame: os._exit(128 + signum))


def interrupted_message(signum: int | None, error) -> str:
    """What an interrupted run left behind, in one line."""
    what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    run_dir = getattr(error, "run_dir", None)
    if run_dir is None:
        return f"{what} before the run started; nothing was written"
    if getattr(error, "summary_written", False):
        return f"{what}; {run_dir} holds what was measured (stop_reason \"interrupted\")"
    return f"{what} before training started; {run_dir} holds only the run's config"


def exit_code(signum: int | None) -> int:
    return 128 + (signum or signal.SIGINT)


# -- asgd-train ----------------------------------------------------------------

SUMMARY_KEYS = ("run_dir", "algorithm", "threads", "updates", "wall_time_s", "updates_per_s",
                "eval_loss", "eval_accuracy", "staleness_mean", "staleness_max", "cas_failures",
                "dropped_updates", "peak_live_buffers", "stop_reason", "time_to_target")

TRAIN_USAGE = """usage: {prog} [--config=PATH[:ARG]] [--config.FIELD=VALUE ...] [--noprint_summary]

Train one model with one algorithm and write a results folder
<workdir>/runs/<timestamp>-<name>/ (config.json, metrics.jsonl, summary.json,
step_times.npz). The fields are documented in asgd/configs/default.py and the
README. Bad input exits with code 2 and one line on stderr; Ctrl-C or SIGTERM
stops the run and keeps what was measured."""


def _train_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_boolean("print_summary", True, "Print summary.json when the run ends.",
                         flag_values=flag_values)


def main(argv: list[str], prog: str = "asgd-train") -> int:
    """Train as the command line says; returns the exit code (bad input exits 2)."""
    cfg, flag_values = parse_config(argv, "default.py", prog, TRAIN_USAGE.format(prog=prog),
                                    _train_flags)
    from asgd.executors.base import RunAborted
    with stop_signals(prog) as signals:
        try:
            from asgd.run import execute, parse, pin_process
            specs = parse(cfg)
            pin_process(specs)
            summary = execute(specs, cfg.to_dict())
        except ValueError as e:  # bad config values, data, step-size parameters
            fail(prog, _first_line(e))
        except RunAborted as e:  # e.g. the Ray parameter server died; the results folder is written
            print(f"{prog}: error: {_first_line(e)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as e:
            print(f"{prog}: {interrupted_message(signals.received, e)}", file=sys.stderr)
            return exit_code(signals.received)
    if flag_values.print_summary:
        print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
    for key in SUMMARY_KEYS:
        if key in summary:
            value = summary[key]
            if isinstance(value, dict):  # time_to_target: {target: seconds or None}
                value = {k: None if v is None else float(f"{v:.4g}") for k, v in value.items()}
            print(f"{key:>18}: {value:.4g}" if isinstance(value, float) else f"{key:>18}: {value}")


def run(prog: str | None = None) -> None:
    """The ``asgd-train`` entry point (``train.py`` calls it too)."""
    code = main(sys.argv, prog or os.path.basename(sys.argv[0]))
    exit_quietly_on_signals()
    sys.exit(code)
