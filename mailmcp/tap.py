"""
``twistd mailmcp``: options and service wiring, nothing else.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorCore
from twisted.logger import ILogObserver
from twisted.python.components import Componentized

from ._config import Config, build_config
from ._options import DAEMON, TableOptions


class Options(TableOptions):
    """
    Options of the mailmcp daemon (declared in L{mailmcp._options}).  Every
    option may also be given as the environment variable ``MAILMCP_<NAME>``;
    the command line wins.
    """

    command = DAEMON
    synopsis = "[options]"
    longdesc = (
        "Serve the mailmcp OAuth 2.1 authorization server and MCP endpoint. "
        "With no options it listens on tcp:8080:interface=127.0.0.1 and keeps "
        "its state in ./mailmcp-state."
    )

    config: Config

    def postOptions(self) -> None:
        self.config = build_config(self, self["listen"] or [], self._environ)


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the daemon's service tree.  The global reactor is resolved here, at
    the edge, and nowhere else.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    assert IReactorCore.providedBy(reactor)
    from ._logging import set_log_level, twistd_observer
    from ._service import build_service

    config = options.config
    set_log_level(config.log_level)
    service: IService = build_service(config, reactor)
    twistd_options = getattr(options, "parent", None)
    if twistd_options is not None:
        observer = twistd_observer(twistd_options, config.log_level, config.log_format, reactor)
        if observer is not None:
            return _WithLogObserver(service, observer)
    return service


class _WithLogObserver(MultiService):
    """
    The daemon's service tree, carrying the log observer for twistd.

    twistd builds the application after calling `makeService` and then uses
    the application's `ILogObserver` component, if any, instead of its own
    (see ``twisted.application.app.AppLogger.start``); this is where a
    plugin's service meets the application, so the observer is set there.
    """

    def __init__(self, tree: IService, observer: ILogObserver) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._observer = observer
        tree.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            parent.setComponent(ILogObserver, self._observer)
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]
