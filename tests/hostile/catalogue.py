"""Snapshots of the daemon state the hostile catalogue tests compare before and after an attack."""

from __future__ import annotations

import imaplib
import ssl

from tests.harness import Services


def snapshot(services: Services, user: str, password: str) -> dict[str, list[bytes]]:
    """Every folder's UIDs with their flags (stdlib client)."""
    context = ssl.create_default_context(cafile=str(services.ca_file))
    out: dict[str, list[bytes]] = {}
    with imaplib.IMAP4_SSL("localhost", services.imaps_port, ssl_context=context) as client:
        client.login(user, password)
        _, boxes = client.list()
        for line in boxes:
            name = line.decode().rsplit(' "/" ', 1)[-1].strip('"')
            client.select(f'"{name}"', readonly=True)
            _, data = client.uid("FETCH", "1:*", "(UID FLAGS)")
            # \Recent belongs to whichever session saw the message first: not content.
            out[name] = sorted((item or b"").replace(b"\\Recent", b"").replace(b"( ", b"(").strip()
                               for item in data if item)
    return out
