# syntax=docker/dockerfile:1
#
# mailmcp in a container: a wheel built from this tree, installed into
# python:3.11-slim, run as an unprivileged user with its state in /data.
#
#   docker build -t mailmcp .
#   docker run -d --name mailmcp -p 127.0.0.1:8080:8080 -v mailmcp-data:/data \
#       -e MAILMCP_BASE_URL=https://mail-mcp.example.com mailmcp
#   docker exec mailmcp twistd mailmcp-generate --imap-host ... --smtp-host ...
#
# Keys: by default the key ring is created on first start as /data/keys.json
# (0600).  To share one ring between containers, pass MAILMCP_KEYS (the ring
# JSON) or mount it read-only and set MAILMCP_KEY_FILE; never put keys on the
# command line.  Every other option is a MAILMCP_* variable (README.rst).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN pip install "build>=1.2"
COPY . .
RUN python -m build --wheel --outdir /dist


FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 mailmcp \
 && useradd --system --uid 10001 --gid mailmcp --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin mailmcp \
 && install -d -o mailmcp -g mailmcp -m 0700 /data

COPY --from=build /dist/ /tmp/dist/
# Install as root, then write Twisted's plugin cache (dropin.cache) while
# still root: the unprivileged user cannot, and twistd would otherwise try
# (and fail) to rewrite it on every start.
RUN pip install /tmp/dist/*.whl \
 && rm -rf /tmp/dist \
 && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
 && twistd --help | grep -q mailmcp-generate

USER mailmcp
WORKDIR /data
VOLUME ["/data"]

# The state directory (key ring, SQLite grant store, attachments) is the
# volume.  Override MAILMCP_BASE_URL with the public https:// address.
ENV MAILMCP_STATE_DIR=/data \
    MAILMCP_BASE_URL=http://127.0.0.1:8080

EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4).status == 200 else 1)"]

# docker stop sends SIGTERM: mailmcp stops accepting, lets in-flight
# requests finish (MAILMCP_SHUTDOWN_TIMEOUT, 10 s; keep docker's stop
# timeout above it) and exits 0.
STOPSIGNAL SIGTERM

# Foreground, no pid file, log to stdout; all interfaces inside the
# container so that published ports reach it.
CMD ["twistd", "--nodaemon", "--pidfile=", "mailmcp", "--listen", "tcp:8080"]
