"""The command line: every bad input is one line on stderr, exit code 2 and no run folder;
--help on every entry point; the default config from any folder; signals."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from asgd import cli, metrics
from test_data import write_idx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_in_process(capsys, tmp_path, *flags):
    """``asgd-train`` in this process: (exit code, stderr lines); nothing may be left in runs/."""
    argv = ["asgd-train", f"--config.workdir={tmp_path}", "--config.quiet=True", *flags]
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.strip().splitlines()


def config_file(tmp_path, text):
    path = tmp_path / "my_config.py"
    path.write_text(text)
    return f"--config={path}"


def idx_folder(tmp_path, n):
    folder = tmp_path / f"idx{n}"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(str(folder), "t10k", rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n))
    return str(folder)


BAD_INPUTS = [
    # (flags, or a function of tmp_path giving them; a piece of the one stderr line)
    (["--config=no/such/config.py"], "config file 'no/such/config.py' not found"),
    (lambda p: [config_file(p, "def get_config(:\n")], "invalid syntax (line 1)"),
    (lambda p: [config_file(p, "def get_config():\n    return {'a': 1}\n")],
     "returned a dict, not an ml_collections.ConfigDict"),
    (lambda p: [config_file(p, "x = 1\n")], "defines no get_config()"),
    (lambda p: [config_file(p, "def get_config():\n    raise RuntimeError('boom')\n")],
     "RuntimeError: boom"),
    (lambda p: [config_file(p, "import no_such_module_xyz\n")], "ModuleNotFoundError"),
    (["--config.algoritm=sequential"], "unknown config field 'algoritm'; did you mean 'algorithm'?"),
    (["--config.no_such_field=1"], "unknown config field 'no_such_field'"),
    (["--no_such_flag"], "no_such_flag"),
    (["--config="], "--config needs a path"),
    (["--config.threads=abc"], "invalid literal"),
    (["--config.threads=-1"], "threads must be in 1..256"),
    (["--config.algorithm=sequential", "--config.threads=2"], "'sequential' runs one thread"),
    (["--config.algorithm=adam"], "unknown algorithm 'adam'"),
    (["--config.model=resnet"], "unknown model 'resnet'"),
    (["--config.dataset=imagenet"], "unknown dataset 'imagenet'"),
    (["--config.batch_size=0"], "batch_size must be positive"),
    (["--config.batch_size=5000"], "batch_size 5000 is larger than the training set (1438 examples)"),
    (["--config.learning_rate=0"], "learning_rate must be positive"),
    (["--config.learning_rate=1e39"], "learning_rate must be positive, finite and within float32"),
    (["--config.time_budget_s=nan"], "time_budget_s must be a finite number"),
    (["--config.target_loss=nan"], "target_loss must be a finite number"),
    (["--config.loss_targets=abc"], "loss_targets must be a tuple of numbers"),
    (["--config.mlp_hidden=(0,)"], "mlp_hidden must be positive integers"),
    (["--config.num_updates=0"], "no stop condition"),
    (lambda p: [f"--config.workdir={p / 'file' / 'sub'}"], "is not a folder"),
    (lambda p: ["--config.dataset=mnist", f"--config.data_dir={p / 'absent'}"], "does not exist"),
    (lambda p: ["--config.dataset=mnist", f"--config.data_dir={idx_folder(p, 0)}"],
     "holds no images"),
    (lambda p: ["--config.dataset=mnist", f"--config.data_dir={idx_folder(p, 1)}"],
     "holds 1 image(s), too few to hold out an eval split"),
]


@pytest.mark.parametrize("flags, message", BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_input_is_one_line_exit_code_2_and_no_run_folder(capsys, tmp_path, flags, message):
    (tmp_path / "file").write_text("a file where a folder is needed")
    flags = flags(tmp_path) if callable(flags) else flags
    code, lines = train_in_process(capsys, tmp_path, *flags)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("asgd-train: error: "), lines
    assert message in lines[0]
    assert not (tmp_path / "runs").exists()


def test_sequential_without_threads_runs_one_thread(capsys, tmp_path):
    code, lines = train_in_process(capsys, tmp_path, "--config.algorithm=sequential",
                                   "--config.num_updates=50", "--noprint_summary")
    assert code == 0, lines
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = metrics.read_json(str(run_dir / "summary.json"))
    assert summary["threads"] == 1 and summary["updates"] == 50
    assert run_dir.name.endswith("-sequential-m1-constant")


def test_the_default_of_threads_is_two_workers_for_the_others():
    from asgd.run import default_config, parse
    cfg = default_config()
    assert cfg.threads == 0 and parse(cfg).executor.threads == 2


def test_an_interrupt_before_training_leaves_nothing(config, monkeypatch):
    from asgd import executors, run
    specs = run.parse(config)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(executors, "warm_up", interrupted)  # Ctrl-C while compiling
    with pytest.raises(run.Interrupted) as e:
        run.execute(specs, config.to_dict())
    assert e.value.run_dir is None and not e.value.summary_written
    assert not os.path.exists(os.path.join(config.workdir, "runs")) or \
        not os.listdir(os.path.join(config.workdir, "runs"))
    assert cli.interrupted_message(signal.SIGINT, e.value) == \
        "interrupted before the run started; nothing was written"
    assert cli.interrupted_message(signal.SIGTERM, run.Interrupted("/r", True)).startswith(
        "terminated (SIGTERM); /r holds what was measured")


# -- as a user runs them --------------------------------------------------------

def entry_point(name):
    """The console script installed beside this Python (a venv's bin/), or None."""
    return shutil.which(name, path=os.path.dirname(sys.executable))


@pytest.mark.parametrize("command", [
    [sys.executable, os.path.join(REPO, "train.py")],
    [sys.executable, "-m", "asgd.study"],
    [sys.executable, "-m", "asgd.stress"],
    [sys.executable, "-m", "asgd.dynamics"],
    "asgd-train",
    "asgd-study",
], ids=["train.py", "asgd.study", "asgd.stress", "asgd.dynamics", "asgd-train", "asgd-study"])
def test_help_works_on_every_entry_point(tmp_path, command):
    if isinstance(command, str):
        path = entry_point(command)
        if path is None:
            pytest.skip(f"{command} is not installed beside {sys.executable}")
        command = [path]
    proc = subprocess.run([*command, "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and proc.stderr == ""
    if "train" in command[-1]:
        assert "--config.FIELD=VALUE" in proc.stdout and "batch_size = 32  # minibatch size" in proc.stdout


def test_train_py_runs_the_asgd_of_its_python_not_the_checkout_beside_it(tmp_path):
    # With an editable install both are the checkout; with an installed wheel
    # (.ci/test-installed) the checkout's asgd/ must not shadow it.
    import asgd
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--help"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"asgd {asgd.__version__} from {os.path.dirname(os.path.abspath(asgd.__file__))}\n" \
        in proc.stdout


def test_train_py_from_another_folder_finds_the_default_config(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--config.quiet=True",
                           "--config.num_updates=50", f"--config.workdir={tmp_path}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "stop_reason: num_updates" in proc.stdout


def test_a_config_error_from_a_subprocess_is_exactly_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py"),
                           "--config=configs/default.py", "--config.algoritm=x",
                           f"--config.workdir={tmp_path}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"train.py: error: unknown config field 'algoritm'; did you mean 'algorithm'? "
        f"(the fields: --help, or {cli.installed_config('default.py')})"]
    assert not (tmp_path / "runs").exists()


def start_training(tmp_path):
    """train.py with a 60 s budget, once it has logged a few events: (process, run folder)."""
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"),
                             f"--config.workdir={tmp_path}", "--config.quiet=True",
                             "--config.num_updates=0", "--config.time_budget_s=60"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        runs = list((tmp_path / "runs").glob("*/metrics.jsonl")) if (tmp_path / "runs").exists() else []
        if runs and len(metrics.read_jsonl(str(runs[0]))) >= 3:
            return proc, runs[0].parent
        time.sleep(0.2)
    proc.kill()
    pytest.fail("training did not start within 120 s")


def test_sigterm_stops_the_run_like_ctrl_c(tmp_path):
    proc, run_dir = start_training(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.splitlines() == [f"train.py: terminated (SIGTERM); {run_dir} holds what was "
                                   "measured (stop_reason \"interrupted\")"]
    summary = metrics.read_json(str(run_dir / "summary.json"))
    assert summary["stop_reason"] == "interrupted" and summary["updates"] > 0


def test_a_second_ctrl_c_exits_at_once_without_a_traceback(tmp_path):
    proc, _ = start_training(tmp_path)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)  # the run is stopping: workers join, summary, exit handlers
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    # 130, or killed by SIGINT itself (-2) when it lands after Python >= 3.12 has
    # restored the default handlers at the very end of its shutdown; a shell shows 130 for both
    assert proc.returncode in (128 + signal.SIGINT, -signal.SIGINT), stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert 1 <= len(stderr.splitlines()) <= 2
