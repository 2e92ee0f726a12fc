"""
Client TLS for talking to users' IMAP and SMTP servers.

Certificates are always verified (host name and chain): against the system
trust store, plus the operator's ``--mail-ca-file`` when given, for servers
with a private CA.  Never Twisted's non-verifying ``ClientContextFactory``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet._sslverify import (
    IOpenSSLTrustRoot,
    OpenSSLDefaultPaths,
)
from zope.interface import implementer


@implementer(IOpenSSLTrustRoot)
class _SystemPlusExtraCA:
    """The platform's trust store plus the certificates of one PEM bundle."""

    def __init__(self, extra: list[ssl.Certificate]) -> None:
        self._extra = extra

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        OpenSSLDefaultPaths()._addCACertsToContext(context)
        store = context.get_cert_store()
        assert store is not None
        for cert in self._extra:
            store.add_cert(cert.original)


def load_pem_certificates(path: Path) -> list[ssl.Certificate]:
    """Every certificate in a PEM bundle."""
    data = path.read_bytes()
    marker = b"-----END CERTIFICATE-----"
    certs = []
    for chunk in data.split(marker):
        if b"-----BEGIN CERTIFICATE-----" in chunk:
            certs.append(ssl.Certificate.loadPEM(chunk + marker + b"\n"))
    return certs


class MailTLS:
    """
    Builds verifying client TLS options for mail servers.

    :param ca_file: an extra PEM bundle trusted on top of the system store.
    """

    def __init__(self, ca_file: Path | None = None) -> None:
        self._extra = load_pem_certificates(ca_file) if ca_file is not None else []
        self._cache: dict[str, Any] = {}

    def options_for(self, host: str) -> Any:
        """`IOpenSSLClientConnectionCreator` verifying C{host}'s certificate."""
        options = self._cache.get(host)
        if options is None:
            options = ssl.optionsForClientTLS(
                host, trustRoot=_SystemPlusExtraCA(self._extra), extraCertificateOptions={}
            )
            self._cache[host] = options
        return options
