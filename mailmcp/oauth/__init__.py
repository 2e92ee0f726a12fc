"""
The OAuth 2.1 authorization server, in rooms over shared parts
(`OAuthParts`):

* discovery (`_discovery`): the well-known metadata documents;
* the login page (`_login`, with `_forms` and `_pages`): ``/oauth/authorize``,
  which checks IMAP and SMTP credentials live;
* token and revocation (`_token`): ``/oauth/token``, ``/oauth/revoke``;
* registration (`mailmcp.oauth._registration`) and client metadata documents
  (`mailmcp.oauth._cimd`), where clients come from;
* the stylesheet (`_static`);

composed by `OAuthApp` (`_app`), which `build_authorization_server` builds.

Clients are provisioned by ``twistd mailmcp-generate`` (they name their
mail servers), registered at ``/oauth/register`` (RFC 7591), or named by a
Client ID Metadata Document URL; the last two log in to the daemon's
default mail profile and are on only when it has one.

Everything public is derived from ``config.base_url``, never from ``Host`` or
``X-Forwarded-*``; the issuer string is identical in both metadata documents
and in the ``iss`` authorization-response parameter.
"""
