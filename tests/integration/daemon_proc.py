"""A twistd daemon run as a subprocess with a clean environment, and its one-line-error check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.harness import ROOT, TWISTD


def clean_env(**extra: str) -> dict[str, str]:
    """The test runner's environment without any MAILMCP_* variable, plus C{extra}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILMCP_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class Proc:
    """A twistd process whose stdout and stderr go to files (never a full pipe)."""

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str],
                 prefix: Sequence[str] = TWISTD, pass_fds: Sequence[int] = ()) -> None:
        self.cwd = cwd
        self.out_path = cwd / f"stdout-{time.monotonic_ns()}.txt"
        self.err_path = cwd / f"stderr-{time.monotonic_ns()}.txt"
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.popen = subprocess.Popen(
            [*prefix, *args],
            cwd=str(cwd), env=env, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
            pass_fds=tuple(pass_fds),
        )

    @property
    def stdout(self) -> str:
        self._out.flush()
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(
                f"twistd did not exit within {timeout}s\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
            ) from None

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._out.close()
        self._err.close()

    def wait_for_health(self, url: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll C{url}/health until it answers 200; fail early if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"twistd exited {self.popen.returncode} before answering\n"
                    f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
                )
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    assert response.status == 200
                    assert response.headers["Content-Type"] == "application/json"
                    document: dict[str, Any] = json.loads(response.read())
                    return document
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise AssertionError(f"no answer from {url}/health in {timeout}s\nstdout:\n{self.stdout}")

    def assert_clean_exit(self) -> None:
        """Exit status 0 and no traceback anywhere."""
        code = self.wait()
        assert code == 0, f"exit {code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        assert "Traceback" not in self.stdout + self.stderr
        assert self.stderr.strip() == ""


def assert_one_line_error(proc: Proc, *expected: str) -> str:
    """Non-zero exit, exactly one line on stderr containing C{expected}, no traceback."""
    code = proc.wait()
    out, err = proc.stdout, proc.stderr
    assert code != 0, f"exit 0\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"stderr should be one line:\n{err}\nstdout:\n{out}"
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    return lines[0]
