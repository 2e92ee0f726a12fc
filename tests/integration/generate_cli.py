"""Running the client generator command and reading its JSON and sealed key id."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.harness import ROOT, TWISTD


def generate(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``twistd mailmcp-generate`` in C{cwd} with a clean environment."""
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILMCP_")}
    process_env["PYTHONPATH"] = str(ROOT) + os.pathsep + process_env.get("PYTHONPATH", "")
    process_env.update(env or {})
    return subprocess.run([*TWISTD, "mailmcp-generate", *args], cwd=str(cwd), env=process_env,
                          capture_output=True, text=True, timeout=60)


def generate_json(cwd: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = generate(cwd, "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def sealed_kid(client_id: str, kids: list[str]) -> str:
    """The key a compact client id is sealed under: its first 4 bytes are SHA-256(kid)[:4]."""
    token = client_id.split(".", 1)[1]
    tag = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))[:4]
    (kid,) = [k for k in kids if hashlib.sha256(k.encode()).digest()[:4] == tag]
    return kid
