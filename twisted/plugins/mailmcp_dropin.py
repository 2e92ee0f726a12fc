"""
twistd plugins for mailmcp.  Declarations only: the real modules are imported
lazily by ``ServiceMaker`` when the tap name is used.
"""

from twisted.application.service import ServiceMaker

mailmcp = ServiceMaker(
    "mailmcp",
    "mailmcp.tap",
    "Hosted MCP server: OAuth 2.1 login and mail tools over IMAP/SMTP.",
    "mailmcp",
)
mailmcp_generate = ServiceMaker(
    "mailmcp-generate",
    "mailmcp.generate_tap",
    "Provision an OAuth client for one mail server (or add a key), then exit.",
    "mailmcp-generate",
)
