"""
``twistd mailmcp``: options and service wiring, nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorCore

from ._config import FLAGS, PARAMETERS, Config, OneLineErrorOptions, build_config, env_name


class Options(OneLineErrorOptions):
    """
    Options of the mailmcp daemon.  Every option may also be given as the
    environment variable ``MAILMCP_<NAME>``; the command line wins.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve the mailmcp OAuth 2.1 authorization server and MCP endpoint. "
        "With no options it listens on tcp:8080:interface=127.0.0.1 and keeps "
        "its state in ./mailmcp-state."
    )
    optParameters = [
        [name, None, None, f"{help} [env {env_name(name)}; default {default or 'none'}]"]
        for name, default, help in PARAMETERS
        if name != "client-metadata-allow"
    ]
    optFlags = [[name, None, f"{help} [env {env_name(name)}]"] for name, help in FLAGS]

    config: Config

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ
        self["listen"] = []
        self["client-metadata-allow"] = None

    def opt_client_metadata_allow(self, prefix: str) -> None:
        """
        URL prefix of Client ID Metadata Documents fetched although the
        address rules would refuse them (in-house clients), repeatable
        [env MAILMCP_CLIENT_METADATA_ALLOW, space separated]
        """
        self["client-metadata-allow"] = [*(self["client-metadata-allow"] or []), prefix]

    def opt_listen(self, description: str) -> None:
        """
        Endpoint to listen on, repeatable: tcp:8080:interface=127.0.0.1,
        ssl:8443:privateKey=key.pem:certKey=cert.pem, unix:/run/mailmcp.sock,
        systemd:domain=INET:index=0 [env MAILMCP_LISTEN, space separated;
        default tcp:8080:interface=127.0.0.1]
        """
        self["listen"].append(description)

    def postOptions(self) -> None:
        self.config = build_config(self, self["listen"], self._environ)


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the daemon's service tree.  The global reactor is resolved here, at
    the edge, and nowhere else.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    assert IReactorCore.providedBy(reactor)
    from ._logging import set_log_level
    from ._service import build_service

    set_log_level(options.config.log_level)
    service: IService = build_service(options.config, reactor)
    return service
