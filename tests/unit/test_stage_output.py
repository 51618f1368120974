"""flows.pipeline.stage_output_to: what a shell stage's command prints reaches the run log a line at a time, a line
redrawn with carriage returns (a progress bar) as its last state, and DVC's own function is restored after."""

from __future__ import annotations

import subprocess
import sys

import pytest
from dvc.stage import run as dvc_run

from flows.pipeline import stage_output_to


@pytest.fixture
def plain_kwargs(monkeypatch: pytest.MonkeyPatch):
    """DVC's prepare_kwargs (which needs a real stage) replaced by one that returns no stream settings."""

    def prepare(*args, **kwargs):
        return {"env": None}

    monkeypatch.setattr(dvc_run, "prepare_kwargs", prepare)
    return prepare


@pytest.mark.parametrize(
    ("printed", "stream", "logged"),
    [
        ("one\ntwo\n", "stdout", ["one", "two"]),
        ("10%\r50%\r100%\ndone\n", "stdout", ["100%", "done"]),
        ("no newline at the end", "stdout", ["no newline at the end"]),
        ("caf\xe9 \u2713\n", "stdout", ["caf\xe9 \u2713"]),
        ("an error\n", "stderr", ["an error"]),
    ],
)
def test_a_commands_lines_reach_emit(plain_kwargs, printed: str, stream: str, logged: list[str]) -> None:
    emitted: list[str] = []
    with stage_output_to(emitted.append):
        kwargs = dvc_run.prepare_kwargs()  # what DVC's _run hands to Popen for each command of the stage
        assert kwargs["stderr"] == subprocess.STDOUT and isinstance(kwargs["stdout"], int)
        command = [sys.executable, "-c", f"import sys; sys.{stream}.buffer.write({printed.encode()!r})"]
        subprocess.run(command, check=True, **kwargs)
    assert emitted == logged


def test_dvcs_function_is_restored_when_the_command_fails(plain_kwargs) -> None:
    with pytest.raises(subprocess.CalledProcessError), stage_output_to(lambda line: None):
        assert dvc_run.prepare_kwargs is not plain_kwargs
        subprocess.run(["sh", "-c", "echo failing; exit 3"], check=True, **dvc_run.prepare_kwargs())
    assert dvc_run.prepare_kwargs is plain_kwargs
