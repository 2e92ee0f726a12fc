"""
`MCPApp`: the ``/mcp`` route, composing the three rooms of the endpoint:
the transport gate (`mailmcp.mcp._gate`), the JSON-RPC dispatcher
(`mailmcp.mcp._dispatch`) and the tool runner (`mailmcp.mcp._runner`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from .._account import MailAccount
from .._config import Config
from .._logging import Logger
from .._toolkit import Tool, ToolServices
from ..interfaces import IAccessTokenVerifier
from ..web._admission import Admission
from ..web._http import ILargeBodyGate, Refusal
from ._dispatch import DEFAULT_INSTRUCTIONS, Dispatcher
from ._gate import Answer, TransportGate, reply, write
from ._jsonrpc import INTERNAL_ERROR, error_message
from ._offload import OffReactor
from ._results import Accepted, InsufficientScope, Outcome, Reply, ToolResult
from ._runner import ToolRunner, index_tools

log = Logger()


@implementer(ILargeBodyGate)
class MCPApp:
    """
    The ``/mcp`` endpoint: MCP over Streamable HTTP, JSON responses only,
    no sessions, both protocol eras on one path.

    :param config: the daemon's `mailmcp._config.Config` (base URL, allowed
        origins, body cap).
    :param verifier: provides `mailmcp.interfaces.IAccessTokenVerifier`.
    :param tool_services: handed to every tool as ``ToolContext.services``.
    :param tools: the tools, in the order ``tools/list`` shows them.
    :param lenient_version_header: see `mailmcp.mcp._dispatch.Dispatcher`.
    :param list_ttl_ms: see `mailmcp.mcp._dispatch.Dispatcher`.
    :param admission: how many requests are worked on at once, with each
        account's share (`mailmcp.web._admission.Admission`).
    :param decode_pool: a started thread pool for decoding bodies over
        `mailmcp.mcp._gate.DECODE_ON_REACTOR_MAX`; without one every body
        decodes on the reactor.  C{reactor} is then required.

    It is also the `ILargeBodyGate` of ``/mcp``: a body over the
    unauthenticated cap is read only once its Bearer token is verified.
    `resource` is what serves it.
    """

    def __init__(
        self,
        config: Config,
        verifier: IAccessTokenVerifier,
        tool_services: ToolServices,
        tools: Sequence[Tool[Any, Any]],
        *,
        instructions: str | None = DEFAULT_INSTRUCTIONS,
        lenient_version_header: bool = True,
        list_ttl_ms: int = 300_000,
        max_body: int | None = None,
        admission: Admission | None = None,
        decode_pool: ThreadPool | None = None,
        reactor: Any = None,
    ) -> None:
        self._tools = index_tools(tools)
        offload = OffReactor(decode_pool, reactor)
        self._gate = TransportGate(
            config,
            verifier,
            admission if admission is not None else Admission(),
            max_body if max_body is not None else int(config.max_request_body),
        )
        self._runner = ToolRunner(tool_services, offload)
        self._dispatcher = Dispatcher(
            self._tools,
            self._runner,
            offload=offload,
            instructions=instructions,
            lenient_version_header=lenient_version_header,
            list_ttl_ms=list_ttl_ms,
        )

    def resource(self) -> IResource:
        """The resource serving ``/mcp`` (and a JSON 404 below it)."""
        return _EndpointResource(self)

    async def mcp(self, request: IRequest) -> bytes:
        """
        The single MCP endpoint: the gate's checks, then the dispatcher.  An
        unexpected failure is the one place a request ends in a JSON-RPC
        internal error (never a traceback).
        """
        try:
            return await self._serve(request)
        except (CancelledError, asyncio.CancelledError):
            log.debug("MCP request cancelled (client went away)")
            raise
        except Exception:
            log.failure("unexpected error serving an MCP request")
            return write(
                request, Answer(200, error_message(None, INTERNAL_ERROR, "Internal error"))
            )

    async def _serve(self, request: IRequest) -> bytes:
        gate = self._gate
        account = await gate.authenticate(request)
        if isinstance(account, Answer):
            return write(request, account)
        refusal = gate.check(request)
        if refusal is None:
            refusal = await gate.enter(account)
            if refusal is None:
                try:
                    return await self._serve_admitted(request, account)
                finally:
                    gate.leave(account)
        return write(request, refusal)

    async def _serve_admitted(self, request: IRequest, account: MailAccount) -> bytes:
        body = self._gate.body(request)
        if isinstance(body, Answer):
            return write(request, body)
        outcome = await self._dispatcher.handle_body(
            account, body.read, self._gate.routing_headers(request), large=body.large
        )
        return self._respond(request, account, outcome)

    def _respond(self, request: IRequest, account: MailAccount, outcome: Outcome) -> bytes:
        """The one mapping of what the dispatcher answers onto the HTTP response."""
        if isinstance(outcome, Reply):
            return reply(request, outcome.status, outcome.body)
        if isinstance(outcome, Accepted):
            request.setResponseCode(202)
            request.setHeader(b"content-length", b"0")
            return b""
        return write(request, self._gate.insufficient_scope(account, outcome))

    def below_mcp(self, request: IRequest) -> bytes:
        """Nothing lives below ``/mcp``; answer in JSON, not an HTML 404."""
        return write(request, Answer(404, {"error": "not_found"}))

    def admit_large_body(self, request: IRequest) -> Deferred[Refusal | None]:
        """`ILargeBodyGate`: see `mailmcp.mcp._gate.TransportGate.admit_large_body`."""
        return Deferred.fromCoroutine(self._gate.admit_large_body(request))

    @property
    def _verified(self) -> Mapping[IRequest, MailAccount]:
        """Accounts verified at headers time, not yet served (for tests)."""
        return self._gate.verified

    async def _call_tool(
        self,
        account: MailAccount,
        tool: Tool[Any, Any],
        arguments: dict[str, Any],
        large: bool = False,
    ) -> ToolResult | InsufficientScope:
        """One ``tools/call`` through the runner, audit entry included."""
        return await self._runner.call(account, tool, arguments, large)


class _EndpointResource(Resource):
    """
    ``/mcp`` served straight from the router: one path, every method
    (the gate checks the method), so Klein's URL map, which cost ~7 % of a
    warm call's reactor time, has nothing to choose.  It keeps Klein's
    contract with the request: the handler is cancelled when the request's
    finish notification fails (client gone, shutdown answered), and nothing
    is written into a request that has finished.
    """

    isLeaf = True

    def __init__(self, endpoint: MCPApp) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._endpoint = endpoint

    def render(self, request: IRequest) -> int:
        if request.path != b"/mcp":
            request.write(self._endpoint.below_mcp(request))
            request.finish()
            return NOT_DONE_YET
        served = Deferred.fromCoroutine(self._endpoint.mcp(request))
        finished = False

        def on_finish(result: object) -> None:
            nonlocal finished
            finished = True
            if isinstance(result, Failure):
                served.cancel()

        def respond(body: bytes) -> None:
            if not finished:
                request.write(body)
                request.finish()

        def failed(failure: Failure) -> None:
            if finished:
                if not failure.check(CancelledError, asyncio.CancelledError):
                    log.failure("MCP request failed after it finished", failure)
                return
            log.failure("unexpected error serving an MCP request", failure)
            request.processingFailed(failure)  # type: ignore[attr-defined]

        request.notifyFinish().addBoth(on_finish)  # type: ignore[attr-defined]
        served.addCallbacks(respond, failed)
        return NOT_DONE_YET
