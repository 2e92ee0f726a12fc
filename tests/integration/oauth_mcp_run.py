"""Runs the unmodified mcp client script through the whole OAuth flow and returns its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT

SCRIPT = Path(__file__).with_name("oauth_mcp_client.py")


def run_client(config: dict) -> dict:
    result = subprocess.run([sys.executable, str(SCRIPT), json.dumps(config)], capture_output=True,
                            text=True, timeout=120, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
