"""The daemon options that sign users in at the harness OAuth provider (its default profile), and the shapes of its tokens."""

from __future__ import annotations

import re

from tests.harness import Services


def provider_args(services: Services) -> list[str]:
    """The daemon's default profile: the test servers, signed in at the test provider."""
    op = services.oauth_provider
    return [
        "--imap-host", "localhost", "--imap-port", str(services.imaps_port),
        "--smtp-host", "localhost", "--smtp-port", str(services.smtps_port),
        "--imap-auth", "xoauth2", "--oauth-provider", "custom",
        "--oauth-client-id", op.client_id,
        "--oauth-client-secret-file", str(op.client_secret_file),
        "--oauth-authorize-url", op.authorize_url, "--oauth-token-url", op.token_url,
        "--oauth-scope", op.scope, "--oauth-userinfo-url", op.userinfo_url,
    ]


#: The test provider's token shapes (tests/oauth_provider.py) and any JWT.
TOKEN_SHAPES = re.compile(r"(?<![\w-])(?:at|rt|code)-[A-Za-z0-9_-]{32}|eyJ[\w-]+\.eyJ[\w-]+\.")
