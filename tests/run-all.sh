#!/usr/bin/env bash
# Run the whole mailmcp test suite on a fresh Debian 12 machine, as root:
# installs the system packages (Dovecot, Postfix, Redis, Chromium, ...), a
# virtualenv in .venv with the project and its test dependencies, then runs
# pytest.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=0
for cmd in dovecot postfix redis-server chromium chromedriver openssl haproxy; do
  command -v "$cmd" >/dev/null 2>&1 || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "run-all.sh: system packages are missing; run as root (or: sudo bash tests/services.sh install)" >&2
    exit 1
  fi
  bash tests/services.sh install
fi

PYTHON=${PYTHON:-python3}
# Debian's python3 has no venv/ensurepip without the python3-venv package.
if [ ! -x .venv/bin/python ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "run-all.sh: $PYTHON cannot create virtualenvs; run as root (or: apt-get install python3-venv)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test,dev]' --config-settings editable_mode=compat

set +e
.venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
  echo "run-all.sh: pytest collected no tests" >&2
fi
exit "$status"
