"""The daemon options that sign users in at the harness OAuth provider (its default profile)."""

from __future__ import annotations

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
