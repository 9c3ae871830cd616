"""Running the commands the template's tools are made of, and saying how one failed.

`tools.roots` (root file systems) and `tools.docker_engine` / `tools.stand_ins` (a Docker engine
and its images) run apt, debootstrap, dockerd and docker the same way: stdout and stderr
together, a deadline, SIGTERM before SIGKILL. Each of those modules has an error type of its own
that a caller branches on (`RootUnavailable`, `DockerUnavailable`); its `CommandFailed` is both
that type and this module's `CommandFailed`, and `run` raises whichever it is given.

Invariant: a `CommandFailed` message is one line naming the step and the command, then the last
`OUTPUT_TAIL_LINES` lines the command printed, so a failure far from the terminal still says why.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

OUTPUT_TAIL_LINES = 40  # of a failed command's output, in the error
TERMINATE_GRACE_SECONDS = 30  # after SIGTERM, before SIGKILL: time to clean up after itself
PROBE_TIMEOUT = 20.0  # seconds for a quick query (`docker info`, `docker image inspect`)


class CommandFailed(Exception):
    """A command failed or hung.

    The first line of the message names the step and the command; the lines after it are the
    end of what the command printed.
    """

    def __init__(self, step: str, command: Sequence[str], outcome: str, output: str) -> None:
        self.step = step
        self.command = list(command)
        self.outcome = outcome
        self.output = output
        super().__init__(f"{step} failed: `{shlex.join(self.command)}` {outcome}\n{tail(output)}")


def run(
    command: Sequence[str],
    *,
    step: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: IO[bytes] | int = subprocess.DEVNULL,
    failure: type[CommandFailed] = CommandFailed,
) -> str:
    """Run a command and return what it printed (stdout and stderr together).

    Raises `failure` (a `CommandFailed`; the caller's own subclass) with that output when the
    command exits non-zero or outlives `timeout`; a command that times out gets SIGTERM first,
    so it can clean up after itself.
    """
    with subprocess.Popen(
        list(command),
        cwd=cwd,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=None if env is None else dict(env),
        text=True,
        errors="replace",
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            output = _terminate(process)
            raise failure(step, command, f"took over {timeout:.0f} s", output) from None
    if process.returncode != 0:
        raise failure(step, command, f"exited {process.returncode}", output)
    return output


def _terminate(process: subprocess.Popen[str]) -> str:
    """Stop a process that ran too long, gently first; return everything it printed."""
    process.terminate()
    try:
        output, _ = process.communicate(timeout=TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def probe(command: Sequence[str]) -> subprocess.CompletedProcess[str] | None:
    """Run a quick query whose failure is an answer, not an error; None if it hangs."""
    try:
        return subprocess.run(
            list(command),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None


def tail(output: str) -> str:
    """The last lines of a command's output, marked as such."""
    lines = output.rstrip().splitlines()
    if not lines:
        return "(it printed nothing)"
    shown = lines[-OUTPUT_TAIL_LINES:]
    return f"--- last {len(shown)} of {len(lines)} lines of its output ---\n" + "\n".join(shown)


def read_text(path: Path) -> str:
    """A file's text (a log, a system file), or an empty string if it cannot be read."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
