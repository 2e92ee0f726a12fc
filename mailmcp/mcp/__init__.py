"""
The ``/mcp`` endpoint, in three rooms (docs/architecture.rst):

- `mailmcp.mcp._gate`: the transport gate, the HTTP checks before JSON-RPC
  (token, Origin, method, media types, admission, body size);
- `mailmcp.mcp._dispatch`: the JSON-RPC dispatcher (eras, ``initialize``,
  ``tools/list``, ``tools/call`` routing, notifications), plain data in and out;
- `mailmcp.mcp._runner`: the tool runner (input validation, scopes, the
  handler, the result or ``isError``, the audit entry);

composed by `MCPApp` (`mailmcp.mcp._app`).  They hand each other values
(`mailmcp.mcp._results`), not exceptions.
"""
