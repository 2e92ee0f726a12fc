"""
mailmcp: a hosted MCP server (and its own OAuth 2.1 server) that gives AI
assistants safe access to a mailbox over IMAP and SMTP.

Run it with ``twistd -n mailmcp``; provision clients with
``twistd mailmcp-generate``.  The implementation lives in private modules;
the public surface is this package's version, `mailmcp.interfaces` and the
two tap modules.
"""

from ._version import __version__

__all__ = ["__version__"]
