"""The `fedrec` command on user mistakes: exit status 2, one message naming the key or file and the fix, no trace.

Every case runs the real console entry point (`python -m fedrec.commands`) in its own directory. The fast cases
all fail before any simulation starts, so they are launched together and share the machine's cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

TIMEOUT_S = 240


@dataclass(frozen=True)
class Run:
    returncode: int
    output: str  # stdout + stderr
    run_dir: Path

    @property
    def flat(self) -> str:
        """The output with line wrapping undone (rich wraps long messages)."""
        return " ".join(self.output.split())


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)  # it would turn Hydra's own errors into tracebacks
    env["COLUMNS"] = "250"
    return env


def launch(args: list[str], workdir: Path) -> tuple[subprocess.Popen[str], Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = workdir / "run"
    command = [sys.executable, "-m", "fedrec.commands", *args, f"hydra.run.dir={run_dir}", "progress=false"]
    proc = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=environment())
    return proc, run_dir


def finish(proc: subprocess.Popen[str], run_dir: Path) -> Run:
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        out += f"\n[test: killed after {TIMEOUT_S} s]"
    return Run(proc.returncode, out, run_dir)


# case -> (arguments, fragments the message must contain: the key or file, and the fix)
FAST_CASES: dict[str, tuple[list[str], list[str]]] = {
    "file-without-path": (["dataset=file"], ["dataset=file needs dataset.path=FILE", "CSV, TSV or Parquet"]),
    "file-missing": (["dataset=file", "dataset.path=/nonexistent.csv"],
                     ["/nonexistent.csv does not exist", "fix the path"]),
    "movielens-missing": (["dataset=movielens100k", "dataset.path=/nonexistent"],
                          ["MovieLens path /nonexistent does not exist", "fix the path", "leave it unset"]),
    "rounds-zero": (["experiment=quick", "federation.rounds=0"], ["federation.rounds=0", "must be >= 1"]),
    "test-fraction": (["split.test_fraction=2"], ["split.test_fraction=2", "must lie in (0, 1)"]),
}
HYDRA_CASE = ["dataset=nope"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Launch every fast case at once, then collect them."""
    base = tmp_path_factory.mktemp("cli")
    cases = {name: args for name, (args, _) in FAST_CASES.items()} | {"dataset-nope": HYDRA_CASE}
    started = {name: launch(args, base / name) for name, args in cases.items()}
    return {name: finish(*p) for name, p in started.items()}


@pytest.mark.parametrize("case", sorted(FAST_CASES))
def test_user_mistake_exits_2_with_a_message_and_the_fix(runs: dict[str, Run], case: str) -> None:
    # Prepare
    run = runs[case]
    _, fragments = FAST_CASES[case]

    # Assert
    assert run.returncode == 2, run.output
    assert "Traceback" not in run.output
    assert "fedrec: error:" in run.flat
    for fragment in fragments:
        assert fragment in run.flat, (fragment, run.output)


def test_unknown_group_option_is_hydras_error_naming_it(runs: dict[str, Run]) -> None:
    # Prepare
    run = runs["dataset-nope"]

    # Assert: Hydra's own message names the option and lists the available ones
    assert run.returncode != 0
    assert "Traceback" not in run.output
    assert "dataset/nope" in run.flat
    assert "movielens100k" in run.flat and "synthetic" in run.flat


@pytest.mark.parametrize("case", [
    "test-fraction",
    "rounds-zero",
])
def test_config_mistakes_fail_before_the_data_is_prepared(runs: dict[str, Run], case: str) -> None:
    # Assert: nothing was written for a run that cannot start
    assert runs[case].returncode == 2
    assert not (runs[case].run_dir / "world").exists()


# --- an unknown model: slow only because, today, it is caught inside the running simulation -----------------


@pytest.fixture(scope="module")
def unknown_model_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tiny = ["experiment=quick", "dataset.n_users=60", "dataset.n_items=30", "dataset.region_only_items=0",
            "bounds=[]"]
    return finish(*launch([*tiny, "model.name=nope"], tmp_path_factory.mktemp("cli-model")))


@pytest.mark.slow
def test_unknown_model_exits_2_listing_the_available_models(unknown_model_run: Run) -> None:
    # Prepare
    run = unknown_model_run

    # Assert
    assert run.returncode == 2, run.output
    assert "Traceback" not in run.output
    assert "model.name='nope'" in run.flat
    assert "mf" in run.flat and "twotower" in run.flat


@pytest.mark.slow
def test_unknown_model_fails_before_the_data_is_prepared(unknown_model_run: Run) -> None:
    assert unknown_model_run.returncode == 2
    assert not (unknown_model_run.run_dir / "world").exists()


# --- `fedrec --help`: every command, then Hydra's own help ------------------------------------------------

COMMAND_LINES = ["fedrec [OVERRIDES]", "fedrec models list|show|diff|export", "fedrec audit verify PATH",
                 "fedrec deploy local|certs|key|check-node"]


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["model=twotower", "--help"]])
def test_help_lists_every_command_then_hydras_config_groups(tmp_path: Path, args: list[str]) -> None:
    # Act
    proc = subprocess.run([sys.executable, "-m", "fedrec.commands", *args], cwd=tmp_path, capture_output=True,
                          text=True, env=environment(), timeout=TIMEOUT_S)

    # Assert: our commands first, then Hydra's groups and composed config, named `fedrec`; nothing written
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    out = proc.stdout
    for line in COMMAND_LINES:
        assert line in out, (line, out)
    assert "fedrec is powered by Hydra" in out
    assert "== Configuration groups ==" in out and "privacy: none, user_dp" in out
    assert out.index("fedrec audit verify PATH") < out.index("== Configuration groups ==")
    if "model=twotower" in args:
        assert "name: twotower" in out  # the overrides still compose the config Hydra shows
    assert list(tmp_path.iterdir()) == []


def test_help_stays_light_no_torch_or_flower(tmp_path: Path) -> None:
    # Prepare: `fedrec --help` in-process, recording what got imported
    code = ("import sys; sys.argv = ['fedrec', '--help']\n"
            "import fedrec.commands.main\n"
            "try:\n    fedrec.commands.main.main()\nexcept SystemExit as exc:\n    status = exc.code\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'flwr', 'ray', 'dp_accounting'))\n"
            "print('STATUS', status, 'HEAVY', heavy, file=sys.stderr)\n")

    # Act
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=environment(), timeout=TIMEOUT_S)

    # Assert
    assert "STATUS 0 HEAVY []" in proc.stderr, proc.stderr


@pytest.mark.parametrize(("argv", "expected"), [
    (["--help"], True), (["-h"], True), (["seed=1", "--help"], True), ([], False), (["seed=1"], False),
    (["--hydra-help"], False), (["models", "--help"], False), (["audit", "-h"], False),
    (["deploy", "--help"], False),
])
def test_wants_help_only_for_the_experiment_app(argv: list[str], expected: bool) -> None:
    from fedrec.commands.main import wants_help

    assert wants_help(argv) is expected
