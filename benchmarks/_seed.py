"""
Synthetic mail stores, written straight into Dovecot's Maildir.

Writing the files ourselves is by far the fastest way to get 100,000
messages into a real Dovecot: one ``open/write/fchown/utime/close`` per
message, no IMAP or LMTP round trip, no Dovecot process involved.  Dovecot
then assigns UIDs and builds its index on the first access (which the
benchmark does, and times, before measuring anything).  `compare_methods`
measures this against ``doveadm save`` and LMTP delivery on a small sample so
the report can say why this method was chosen.

Extra accounts for the concurrency runs get hard links to the first messages
of a master folder: Dovecot itself hard-links on COPY, and each account still
has its own index and UIDs.
"""

from __future__ import annotations

import os
import random
import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

MAIL_UID = 8  # Debian's 'mail' user, as the test Dovecot config requires
MAIL_GID = 8
HOST = socket.gethostname().replace("/", "_").replace(":", "_") or "bench"

_FIRST = ["Ada", "Ben", "Chloé", "Dmitri", "Eve", "Farid", "Grace", "Hiro", "Ines", "Jon", "Kasia", "Lars"]
_LAST = ["Lovelace", "Okafor", "Martin", "Ivanov", "Smith", "Haddad", "Hopper", "Tanaka", "Silva", "Berg"]
_SUBJECTS = [
    "Quarterly report draft", "Re: lunch on Friday?", "Invoice {n} for October", "Build #{n} failed",
    "Meeting notes: roadmap sync", "Fwd: travel itinerary", "Your order {n} has shipped",
    "Re: Re: question about the API", "Weekly digest", "Pull request #{n}: fix flaky test",
]
_WORDS = ("the quick brown fox jumps over lazy dog mail server folder message budget review "
          "release planning team please thanks regards tomorrow attached update").split()


def _chown_dir(path: Path) -> None:
    os.chown(path, MAIL_UID, MAIL_GID)


def maildir_path(mail_root: Path, user: str, folder: str = "INBOX") -> Path:
    """The Maildir of C{folder} for C{user} (layout ``maildir:~/Maildir``, separator '/')."""
    base = mail_root / user / "Maildir"
    return base if folder == "INBOX" else base / ("." + folder.replace("/", "."))


def make_maildir(mail_root: Path, user: str, folder: str = "INBOX") -> Path:
    home = mail_root / user
    base = home / "Maildir"
    path = maildir_path(mail_root, user, folder)
    for d in (home, base, path, path / "cur", path / "new", path / "tmp"):
        d.mkdir(exist_ok=True)
        _chown_dir(d)
    if folder != "INBOX":
        marker = path / "maildirfolder"
        marker.touch()
        os.chown(marker, MAIL_UID, MAIL_GID)
    return path


def message(n: int, rng: random.Random, when: float, to: str) -> bytes:
    """A small, realistic RFC 5322 message (about 0.6–2 KB, CRLF line ends)."""
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    sender = f"{first} {last}"
    local = f"{first}.{last}".lower().encode("ascii", "ignore").decode() or "x"
    subject = rng.choice(_SUBJECTS).format(n=n)
    if any(ord(c) > 127 for c in sender):
        # RFC 2047 encoded display name, as real mail carries.
        import base64
        sender = "=?utf-8?b?" + base64.b64encode(sender.encode()).decode() + "?="
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
    body = "\r\n".join(
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 14))) for _ in range(rng.randint(3, 20))
    )
    headers = (
        f"Return-Path: <{local}@example.org>\r\n"
        f"Message-ID: <{n}.{int(when)}@bench.example.org>\r\n"
        f"Date: {date}\r\n"
        f"From: {sender} <{local}@example.org>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        "MIME-Version: 1.0\r\n"
    )
    if n % 5 == 0:
        boundary = f"b{n:08d}"
        text = (
            headers + f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
            f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>{body}</p>\r\n"
            f"--{boundary}--\r\n"
        )
    else:
        text = headers + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n"
    return text.encode("utf-8")


def fill_maildir(path: Path, count: int, to: str, seed: int = 7, start: float | None = None) -> list[str]:
    """
    Write C{count} messages into C{path}/cur, oldest first, one minute apart,
    ending now.  About 80 % are \\Seen and 5 % \\Flagged.  Returns the file names.
    """
    rng = random.Random(seed)
    end = time.time() if start is None else start
    begin = end - count * 60
    cur = path / "cur"
    names = []
    flags_choices = ["S"] * 15 + [""] * 4 + ["FS"]
    for n in range(count):
        when = begin + n * 60
        data = message(n, rng, when, to)
        flags = rng.choice(flags_choices)
        # <time>.<unique>.<host>,S=<size>,W=<size>:2,<flags>; the W= (virtual,
        # CRLF) size lets Dovecot answer RFC822.SIZE without reading the file.
        name = f"{int(when)}.M{n}P{os.getpid()}.{HOST},S={len(data)},W={len(data)}:2,{flags}"
        fd = os.open(cur / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fchown(fd, MAIL_UID, MAIL_GID)
            os.utime(fd, (when, when))
        finally:
            os.close(fd)
        names.append(name)
    return names


def link_maildir(source: Path, names: list[str], target: Path) -> None:
    """Hard-link C{names} from C{source}/cur into C{target}/cur."""
    src, dst = source / "cur", target / "cur"
    for name in names:
        os.link(src / name, dst / name)


def add_users(users_file: Path, users: dict[str, str]) -> None:
    """Append Dovecot passwd-file lines (Dovecot re-reads the file when it changes)."""
    with open(users_file, "a", encoding="ascii") as f:
        for email, password in users.items():
            f.write(f"{email}:{{PLAIN}}{password}::::::\n")


#: Accounts `compare_methods` writes into; best added with the others before
#: Dovecot first reads the passwd-file.
COMPARE_USERS = {f"seedcmp-{m}@example.test": "pw" for m in ("maildir", "doveadm", "lmtp")}


def compare_methods(svc: Path, lmtp_port: int, sample: int = 300, add: bool = False) -> dict[str, object]:
    """
    Time three ways of putting C{sample} messages into a fresh mailbox:
    direct Maildir files, ``doveadm save`` (one process per message, as it
    takes one message on stdin) and LMTP delivery.  Returns messages/s each.
    """
    conf = svc / "dovecot" / "dovecot.conf"
    mail_root = svc / "mail"
    if add:
        add_users(svc / "users", COMPARE_USERS)
    rng = random.Random(3)
    msgs = [message(n, rng, time.time() - 60 * (sample - n), "x@example.test") for n in range(sample)]
    result: dict[str, object] = {"sample_messages": sample}

    path = make_maildir(mail_root, "seedcmp-maildir@example.test")
    t0 = time.perf_counter()
    fill_maildir(path, sample, "x@example.test")
    result["maildir_files_msgs_per_s"] = round(sample / (time.perf_counter() - t0))

    doveadm = shutil.which("doveadm")
    if doveadm:
        n = min(sample, 100)
        t0 = time.perf_counter()
        ok = True
        for data in msgs[:n]:
            r = subprocess.run([doveadm, "-c", str(conf), "save", "-u", "seedcmp-doveadm@example.test"],
                               input=data, capture_output=True, timeout=30)
            if r.returncode != 0:
                ok = False
                result["doveadm_save_error"] = r.stderr.decode(errors="replace")[:200]
                break
        if ok:
            result["doveadm_save_msgs_per_s"] = round(n / (time.perf_counter() - t0), 1)

    t0 = time.perf_counter()
    lmtp = smtplib.LMTP("127.0.0.1", lmtp_port)
    try:
        for data in msgs:
            lmtp.sendmail("bench@example.org", ["seedcmp-lmtp@example.test"], data)
    finally:
        lmtp.quit()
    result["lmtp_msgs_per_s"] = round(sample / (time.perf_counter() - t0))
    return result


def newsletter(n: int, to: str, size: int = 60_000) -> bytes:
    """
    A single-part HTML newsletter of about C{size} bytes: nested tables,
    inline styles, links and entities, the kind of markup that makes
    HTML-to-text conversion (not IMAP) the cost of reading it.
    """
    rng = random.Random(1000 + n)
    rows: list[str] = []
    while sum(len(r) for r in rows) < size - 2000:
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 40)))
        rows.append(
            '<tr><td style="padding:12px;font-family:Arial,sans-serif;color:#333">'
            f'<h2 style="margin:0">{rng.choice(_SUBJECTS).format(n=n)} &amp; more</h2>'
            f'<p>{words} &mdash; <a href="https://news.example.org/a/{len(rows)}?utm_source=x">'
            f"read&nbsp;more</a></p></td></tr>\r\n"
        )
    html = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><style>td{font-size:14px}</style></head>'
        '<body><table role="presentation" width="100%"><tr><td><table width="600">\r\n'
        + "".join(rows)
        + "</table></td></tr></table></body></html>\r\n"
    )
    return (
        f"Message-ID: <newsletter.{n}@bench.example.org>\r\n"
        "Date: Mon, 30 Nov 2026 08:00:00 +0000\r\n"
        "From: Weekly News <news@example.org>\r\n"
        f"To: {to}\r\n"
        f"Subject: Newsletter {n}\r\n"
        "X-Bench-Item: newsletter\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n" + html
    ).encode("utf-8")


def with_attachment(n: int, to: str, size: int = 2 * 1024 * 1024) -> bytes:
    """A short text message with one C{size}-byte (decoded) PDF-typed attachment, base64 encoded."""
    import base64

    payload = random.Random(2000 + n).randbytes(size)
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    boundary = f"att{n:06d}"
    head = (
        f"Message-ID: <attachment.{n}@bench.example.org>\r\n"
        "Date: Mon, 30 Nov 2026 09:00:00 +0000\r\n"
        "From: Reports <reports@example.org>\r\n"
        f"To: {to}\r\n"
        f"Subject: Report {n} attached\r\n"
        "X-Bench-Item: attachment\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Please find the report attached.\r\n"
        f"--{boundary}\r\nContent-Type: application/pdf; name=\"report-{n}.pdf\"\r\n"
        f'Content-Disposition: attachment; filename="report-{n}.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode("ascii")
    return head + encoded + f"--{boundary}--\r\n".encode("ascii")


def write_messages(path: Path, messages: Sequence[bytes], start: float) -> None:
    """Write C{messages} into the Maildir C{path}/cur (seen), one minute apart from C{start}."""
    for n, data in enumerate(messages):
        when = start + n * 60
        name = f"{int(when)}.R{n}P{os.getpid()}.{HOST},S={len(data)},W={len(data)}:2,S"
        fd = os.open(path / "cur" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fchown(fd, MAIL_UID, MAIL_GID)
            os.utime(fd, (when, when))
        finally:
            os.close(fd)
