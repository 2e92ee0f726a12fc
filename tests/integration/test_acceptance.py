"""
Acceptance through the public surface only: a real ``twistd mailmcp``
daemon, clients provisioned with ``twistd mailmcp-generate``, the real
``mcp`` 2.x client (its `OAuthClientProvider` logging in through the login
page, in a plain-asyncio subprocess: `acceptance_client.py`) in both
protocol eras, and every tool checked against the real mailbox (Dovecot,
read back with the stdlib IMAP client over TLS) and the real mail flow
(Postfix delivering to Dovecot).

The mailbox is built so that sequence numbers and UIDs differ: seven
messages are delivered and two expunged before the assistant looks.  One
daemon serves the module; each scenario has its own fresh user.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mailmcp.mail._untrusted import unmark_body
from tests import harness
from tests.harness import Daemon, Services, generate_client
from tests.integration.acceptance import (
    BLOB,
    Assistant,
    Mailbox,
    assert_clean_log,
    check_login,
    fresh_users,
)

pytestmark = pytest.mark.integration

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf"]


# -- the mail side ----------------------------------------------------------


def message(recipient: str, subject: str, body: str, attachment: bytes | None = None) -> tuple[bytes, str]:
    m = EmailMessage()
    m["From"] = "Acceptance Sender <sender@example.test>"
    m["To"] = recipient
    m["Subject"] = subject
    m["Date"] = formatdate(localtime=False)
    m["Message-ID"] = message_id = make_msgid(domain="example.test")
    m.set_content(body)
    if attachment is not None:
        m.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="blob.bin")
    return m.as_bytes(policy=email.policy.SMTP), message_id


def build_inbox(services: Services, user: str, password: str, tag: str) -> dict[str, Any]:
    """
    Seven messages (UIDs 1-7, the last with a binary attachment), then UIDs 2
    and 4 expunged: INBOX holds UIDs 1, 3, 5, 6, 7 at sequence numbers 1-5.
    """
    ids = {}
    for n, word in enumerate(WORDS, start=1):
        raw, ids[n] = message(user, f"Acceptance {word} {tag}", f"Body {n}: the {word} line of {tag}.\n",
                              BLOB if n == 7 else None)
        services.deliver(user, raw)
    with Mailbox(services, user, password) as box:
        assert box.uids("INBOX") == [1, 2, 3, 4, 5, 6, 7]
        box.imap.select("INBOX")
        box.imap.uid("STORE", "2,4", "+FLAGS.SILENT", "(\\Deleted)")
        box.imap.expunge()
        assert box.uids("INBOX") == [1, 3, 5, 6, 7]
        uidvalidity = box.examine("INBOX")
    return {"message_ids": ids, "uidvalidity": uidvalidity}


def download(url: str) -> tuple[bytes, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return response.read(), response.headers


# -- the assistant side ------------------------------------------------------


def check_call_era(assistant: Assistant, mode: str) -> None:
    """The last tool call was one authenticated POST carrying the era's protocol version."""
    calls = [r for r in assistant.last_requests if r["rpc"] == "tools/call"]
    assert calls, assistant.last_requests
    assert all(r["bearer"] and r["http"] == "POST" for r in calls)
    expected = "2025-11-25" if mode == "legacy" else "2026-07-28"
    assert {r["version"] for r in calls} == {expected}


# -- the full scenario -------------------------------------------------------


@pytest.mark.parametrize(("kind", "mode"), [
    ("confidential", "legacy"),
    ("public", "2026-07-28"),
    ("confidential", "auto"),
    ("public", "legacy"),
])
def test_every_tool_against_the_real_mailbox(services: Services, deployment: SimpleNamespace,
                                             assistants: Any, kind: str, mode: str) -> None:
    """
    Logged in through OAuth with a pre-registered client, the real mcp client
    calls every tool in the protocol era asked for; each result is structured
    and the same JSON as text, and matches what the mailbox really holds.
    """
    (user, password), = fresh_users(services, 1)
    tag = uuid.uuid4().hex[:8]
    inbox = build_inbox(services, user, password, tag)
    subject = {uid: f"Acceptance {WORDS[uid - 1]} {tag}" for uid in range(1, 8)}
    assistant = assistants(deployment.daemon, deployment.clients[kind], kind, mode, user, password)
    check_login(assistant, mode)

    # list_mailboxes: the SPECIAL-USE folders and INBOX's real counts.
    out = assistant.call("list_mailboxes", {})
    check_call_era(assistant, mode)
    boxes = {b["name"]: b for b in out["mailboxes"]}
    assert {name: boxes[name]["special_use"] for name in ("Drafts", "Sent", "Trash", "Junk", "Archive")} == {
        "Drafts": "\\Drafts", "Sent": "\\Sent", "Trash": "\\Trash", "Junk": "\\Junk", "Archive": "\\Archive"}
    assert boxes["INBOX"]["special_use"] is None and boxes["INBOX"]["selectable"] is True
    assert out["total"] == len(out["mailboxes"])
    assert out["counts_included"] is True
    assert (boxes["INBOX"]["messages"], boxes["INBOX"]["unseen"]) == (5, 5)
    assert (boxes["Sent"]["messages"], boxes["Trash"]["messages"]) == (0, 0)

    # list_mail_messages: UIDs, not sequence numbers, newest first, paged.
    out = assistant.call("list_mail_messages", {"folder": "INBOX"})
    assert (out["folder"], out["uidvalidity"], out["total"], out["has_more"]) == (
        "INBOX", inbox["uidvalidity"], 5, False)
    assert [m["uid"] for m in out["messages"]] == [7, 6, 5, 3, 1]
    assert {m["uid"]: m["subject"] for m in out["messages"]} == {u: subject[u] for u in (7, 6, 5, 3, 1)}
    assert {m["uid"]: m["message_id"] for m in out["messages"]} == {
        u: inbox["message_ids"][u] for u in (7, 6, 5, 3, 1)}
    assert [m["has_attachments"] for m in out["messages"]] == [True, False, False, False, False]
    assert not any(m["seen"] for m in out["messages"])
    assert out["messages"][0]["from"] == [{"name": "Acceptance Sender", "email": "sender@example.test"}]
    page = assistant.call("list_mail_messages", {"folder": "INBOX", "page": 2, "per_page": 2})
    assert ([m["uid"] for m in page["messages"]], page["has_more"]) == ([5, 3], True)
    page = assistant.call("list_mail_messages", {"folder": "INBOX", "page": 3, "per_page": 2})
    assert ([m["uid"] for m in page["messages"]], page["has_more"]) == ([1], False)

    # search_mail_messages: structured filters and raw IMAP criteria.
    out = assistant.call("search_mail_messages", {"folder": "INBOX", "subject": "echo"})
    assert (out["uids"], out["total"], out["uidvalidity"]) == ([5], 1, inbox["uidvalidity"])
    assert [m["subject"] for m in out["messages"]] == [subject[5]]
    out = assistant.call("search_mail_messages", {"query": "OR SUBJECT alpha SUBJECT foxtrot"})
    assert out["uids"] == [6, 1]
    out = assistant.call("search_mail_messages", {"from": "sender@example.test", "text": f"golf line of {tag}"})
    assert out["uids"] == [7]
    out = assistant.call("search_mail_messages", {"subject": "bravo"})
    assert (out["uids"], out["total"]) == ([], 0)

    # get_mail_message: the right message, and reading it does not set \Seen.
    out = assistant.call("get_mail_message", {"folder": "INBOX", "uid": 5})
    assert (out["uid"], out["uidvalidity"], out["subject"], out["message_id"]) == (
        5, inbox["uidvalidity"], subject[5], inbox["message_ids"][5])
    assert f"the echo line of {tag}" in unmark_body(out["body"])
    assert out["body_format"] == "text/plain" and out["seen"] is False and out["attachments"] == []
    with Mailbox(services, user, password) as box:
        assert "\\Seen" not in box.flags("INBOX", 5)

    # Attachments: listed by get_mail_message, linked, downloaded byte-exact.
    out = assistant.call("get_mail_message", {"folder": "INBOX", "uid": 7})
    assert f"the golf line of {tag}" in unmark_body(out["body"])
    (attachment,) = out["attachments"]
    assert (attachment["filename"], attachment["content_type"], attachment["part_id"]) == (
        "blob.bin", "application/octet-stream", "2")
    # get_mail_message lists the attachment; a url there is optional ("when
    # the server provides one"), and must then work like the link tool's.
    if attachment["url"] is not None:
        assert download(attachment["url"])[0] == BLOB
    link = assistant.call("get_mail_attachment_link", {"folder": "INBOX", "uid": 7, "part": "2"})
    assert (link["filename"], link["size"], link["sha256"]) == ("blob.bin", len(BLOB), hashlib.sha256(BLOB).hexdigest())
    assert link["url"].startswith(deployment.daemon.base_url + "/attachments/")
    body, headers = download(link["url"])
    assert body == BLOB
    assert "blob.bin" in headers.get("content-disposition", "")
    with Mailbox(services, user, password) as box:
        assert "\\Seen" not in box.flags("INBOX", 7)

    # update_mail_message_flags: add, then remove, as the server sees it.
    out = assistant.call("update_mail_message_flags",
                         {"folder": "INBOX", "uid": 3, "add": ["\\Flagged", "$Acceptance"], "remove": []})
    assert {"\\Flagged", "$Acceptance"} <= set(out["flags"]) and out["uid"] == 3
    with Mailbox(services, user, password) as box:
        assert {"\\Flagged", "$Acceptance"} <= box.flags("INBOX", 3)
    out = assistant.call("update_mail_message_flags",
                         {"folder": "INBOX", "uid": 3, "add": ["\\Seen"], "remove": ["\\Flagged"]})
    assert "\\Flagged" not in out["flags"] and {"\\Seen", "$Acceptance"} <= set(out["flags"])
    with Mailbox(services, user, password) as box:
        flags = box.flags("INBOX", 3)
        assert "\\Flagged" not in flags and {"\\Seen", "$Acceptance"} <= flags

    # A stale uidvalidity is refused as a tool error, and nothing changes.
    failed = assistant.raw_call("update_mail_message_flags", {
        "folder": "INBOX", "uid": 5, "uidvalidity": inbox["uidvalidity"] + 1, "add": ["\\Flagged"]})
    assert failed["is_error"] is True and "UIDVALIDITY" in failed["texts"][0]
    with Mailbox(services, user, password) as box:
        assert "\\Flagged" not in box.flags("INBOX", 5)

    # move_mail_message: the message is in Archive under the new UID it reports.
    out = assistant.call("move_mail_message", {"folder": "INBOX", "uid": 1, "destination": "Archive"})
    with Mailbox(services, user, password) as box:
        assert out["destination_uidvalidity"] == box.examine("Archive")
        assert box.uids("Archive") == [out["destination_uid"]]
        assert box.fetch("Archive", out["destination_uid"])["Subject"] == subject[1]
        assert box.uids("INBOX") == [3, 5, 6, 7]
    assert (out["uid"], out["uidvalidity"], out["destination"]) == (1, inbox["uidvalidity"], "Archive")

    # delete_mail_message: to Trash; the other messages survive untouched.
    out = assistant.call("delete_mail_message", {"folder": "INBOX", "uid": 3})
    assert (out["action"], out["trash_folder"], out["uid"]) == ("moved_to_trash", "Trash", 3)
    with Mailbox(services, user, password) as box:
        assert box.uids("Trash") == [out["trash_uid"]]
        out_trash_uid = out["trash_uid"]
        assert box.fetch("Trash", out["trash_uid"])["Subject"] == subject[3]
        assert box.uids("INBOX") == [5, 6, 7]
        assert not any("\\Seen" in box.flags("INBOX", uid) for uid in (5, 6, 7))
    listed = assistant.call("list_mail_messages", {"folder": "INBOX"})
    assert [m["uid"] for m in listed["messages"]] == [7, 6, 5]

    # send_mail_message: arrives at bob (to), carol (cc) and dave (bcc, named
    # in no header anyone receives), with the attachment forwarded by link
    # and an HTML alternative; the copy, Bcc included, is in the sender's Sent.
    sent_subject = f"Acceptance sent {tag}"
    out = assistant.call("send_mail_message", {
        "to": ["Bob <bob@example.test>"], "cc": "carol@example.test", "bcc": ["dave@example.test"],
        "subject": sent_subject, "text_body": f"Hello Bob, sent by the acceptance test {tag}.",
        "html_body": f"<p>Hello <b>Bob</b>, html {tag}</p>", "attachment_urls": [link["url"]],
    })
    assert out["status"] == "sent" and out["warnings"] == []
    assert sorted((r["address"], r["accepted"]) for r in out["recipients"]) == [
        ("bob@example.test", True), ("carol@example.test", True), ("dave@example.test", True)]
    assert out["sent_folder"] == "Sent"
    delivered = {}
    for name in ("bob", "carol", "dave"):
        with Mailbox(services, f"{name}@example.test", f"{name}pw") as other:
            (arrived,) = other.wait_for("INBOX", "SUBJECT", tag)
            delivered[name] = other.fetch("INBOX", arrived)
    received = delivered["bob"]
    assert received["Subject"] == sent_subject and received["Message-ID"] == out["message_id"]
    assert user in received["From"] and "Acceptance Test" in received["From"]
    assert "bob@example.test" in received["To"] and "carol@example.test" in received["Cc"]
    assert f"sent by the acceptance test {tag}" in received.get_body(("plain",)).get_content()
    assert f"html {tag}" in received.get_body(("html",)).get_content()
    (forwarded,) = list(received.iter_attachments())
    assert forwarded.get_filename() == "blob.bin" and forwarded.get_content() == BLOB
    assert {copy["Message-ID"] for copy in delivered.values()} == {out["message_id"]}
    assert all(copy["Bcc"] is None for copy in delivered.values())
    for name in ("bob", "carol"):
        assert "dave@" not in delivered[name].as_string().split("\n\n", 1)[0]
    with Mailbox(services, user, password) as box:
        assert out["sent_uidvalidity"] == box.examine("Sent")
        assert box.uids("Sent") == [out["sent_uid"]]
        copy = box.fetch("Sent", out["sent_uid"])
        assert copy["Message-ID"] == out["message_id"] and copy["Subject"] == sent_subject
        assert "dave@example.test" in copy["Bcc"]
        assert "\\Seen" in box.flags("Sent", out["sent_uid"])

    # create_draft_mail_message: saved in Drafts as a \Draft, not sent.
    draft_subject = f"Acceptance draft {tag}"
    out = assistant.call("create_draft_mail_message", {
        "to": "bob@example.test", "subject": draft_subject, "text_body": "Not finished yet."})
    assert (out["status"], out["folder"]) == ("saved", "Drafts")
    with Mailbox(services, user, password) as box:
        assert out["uidvalidity"] == box.examine("Drafts")
        assert box.uids("Drafts") == [out["uid"]]
        assert box.fetch("Drafts", out["uid"])["Subject"] == draft_subject
        assert "\\Draft" in box.flags("Drafts", out["uid"])
    check_call_era(assistant, mode)

    # Permanent deletes remove exactly one UID: emptying it from Trash, and
    # from INBOX while another client has a \Deleted message pending there
    # (never a bare EXPUNGE, which would take that one too).
    trashed = assistant.call("delete_mail_message", {"folder": "Trash", "uid": out_trash_uid})
    assert trashed["action"] == "deleted_permanently"
    with Mailbox(services, user, password) as box:
        assert box.uids("Trash") == []
        box.imap.select("INBOX")
        box.imap.uid("STORE", "6", "+FLAGS.SILENT", "(\\Deleted)")
    gone = assistant.call("delete_mail_message", {"folder": "INBOX", "uid": 5, "permanent": True})
    assert (gone["action"], gone["uid"], gone["uidvalidity"]) == ("deleted_permanently", 5, inbox["uidvalidity"])
    with Mailbox(services, user, password) as box:
        assert box.uids("INBOX") == [6, 7] and "\\Deleted" in box.flags("INBOX", 6)
        assert box.uids("Trash") == []

    # A tool failure is a result with isError, not a transport error.
    failed = assistant.raw_call("get_mail_message", {"folder": "INBOX", "uid": 1})
    assert failed["is_error"] is True and "UID 1" in failed["texts"][0]
    failed = assistant.raw_call("list_mail_messages", {"folder": f"No such folder {tag}"})
    assert failed["is_error"] is True and "No such folder" in failed["texts"][0]
    failed = assistant.raw_call("list_mail_messages", {"folder": "INBOX", "per_page": 500})
    assert failed["is_error"] is True and "per_page" in failed["texts"][0]
    assert_clean_log(deployment.daemon)


# -- other deployments -------------------------------------------------------


def test_redis_store_login_and_tool_call(services: Services, daemon_factory: Any, assistants: Any) -> None:
    """With --store redis://, the OAuth login and a tool call work and no SQLite file is created."""
    daemon = daemon_factory(services, "--store", services.redis_url)
    client = generate_client(daemon.state_dir, services)
    (user, password), = fresh_users(services, 1)
    tag = uuid.uuid4().hex[:8]
    raw, message_id = message(user, f"Acceptance redis {tag}", "Stored in Redis.\n")
    services.deliver(user, raw)
    assistant = assistants(daemon, client, "confidential", "auto", user, password)
    check_login(assistant, "auto")
    out = assistant.call("list_mail_messages", {"folder": "INBOX"})
    assert [(m["uid"], m["subject"], m["message_id"]) for m in out["messages"]] == [
        (1, f"Acceptance redis {tag}", message_id)]
    assert not (daemon.state_dir / "mailmcp.sqlite3").exists()
    assert_clean_log(daemon)


def test_s3_attachment_round_trip(s3: Services, daemon_factory: Any, assistants: Any) -> None:
    """With --attachments s3://bucket/prefix, an attachment's link points at S3 and downloads byte-exact."""
    env = {"AWS_ACCESS_KEY_ID": "testkey", "AWS_SECRET_ACCESS_KEY": "testsecret",
           "AWS_DEFAULT_REGION": "us-east-1", "MAILMCP_S3_ENDPOINT": s3.s3_endpoint}
    daemon = daemon_factory(s3, "--attachments", "s3://attachments/acceptance", env=env)
    client = generate_client(daemon.state_dir, s3, "--public")
    (user, password), = fresh_users(s3, 1)
    raw, _ = message(user, "Acceptance S3", "See the attachment.\n", BLOB)
    s3.deliver(user, raw)
    assistant = assistants(daemon, client, "public", "legacy", user, password)
    check_login(assistant, "legacy")
    out = assistant.call("get_mail_attachment_link", {"folder": "INBOX", "uid": 1, "part": "2"})
    assert (out["filename"], out["size"], out["sha256"]) == ("blob.bin", len(BLOB), hashlib.sha256(BLOB).hexdigest())
    assert out["url"].startswith(s3.s3_endpoint + "/attachments/acceptance/")
    body, headers = download(out["url"])
    assert body == BLOB
    assert "blob.bin" in headers.get("content-disposition", "")
    with Mailbox(s3, user, password) as box:
        assert "\\Seen" not in box.flags("INBOX", 1)
    assert_clean_log(daemon)


def test_non_ascii_folders_subjects_and_bodies(services: Services, deployment: SimpleNamespace,
                                               assistants: Any) -> None:
    """
    Non-ASCII all the way: a folder with a modified-UTF-7 name is listed
    decoded and usable as move destination and draft folder; encoded subjects
    and attachment names come back decoded; a UTF-8 search finds the message;
    a sent message's non-ASCII subject and body arrive intact.
    """
    (user, password), = fresh_users(services, 1)
    tag = uuid.uuid4().hex[:8]
    folder, folder_wire = "Projekte/Überblick", "Projekte/&ANw-berblick"
    m = EmailMessage()
    m["From"] = "Jürgen Groß <juergen@example.test>"
    m["To"] = user
    m["Subject"] = subject = f"Grüße aus Köln ✓ {tag}"
    m["Message-ID"] = make_msgid(domain="example.test")
    m["Date"] = formatdate()
    m.set_content(f"Schöne Grüße, {tag}: 日本語のテキスト.\n")
    m.add_attachment(BLOB, maintype="application", subtype="octet-stream", filename="Bericht Übersicht.bin")
    services.deliver(user, m.as_bytes(policy=email.policy.SMTP))
    with Mailbox(services, user, password) as box:
        assert box.imap.create(folder_wire)[0] == "OK"
    assistant = assistants(deployment.daemon, deployment.clients["confidential"], "confidential", "auto",
                           user, password)
    check_login(assistant, "auto")

    boxes = {b["name"]: b for b in assistant.call("list_mailboxes", {})["mailboxes"]}
    assert folder in boxes and boxes[folder]["selectable"] is True
    listed = assistant.call("list_mail_messages", {"folder": "INBOX"})
    (summary,) = listed["messages"]
    assert summary["subject"] == subject
    assert summary["from"] == [{"name": "Jürgen Groß", "email": "juergen@example.test"}]
    assert assistant.call("search_mail_messages", {"subject": "Köln ✓"})["uids"] == [1]
    assert assistant.call("search_mail_messages", {"text": "日本語"})["uids"] == [1]
    out = assistant.call("get_mail_message", {"folder": "INBOX", "uid": 1})
    assert f"Schöne Grüße, {tag}: 日本語のテキスト." in unmark_body(out["body"])
    (attachment,) = out["attachments"]
    assert attachment["filename"] == "Bericht Übersicht.bin"
    link = assistant.call("get_mail_attachment_link", {"folder": "INBOX", "uid": 1, "part": "2"})
    body, headers = download(link["url"])
    assert body == BLOB and "filename*=UTF-8''Bericht%20%C3%9Cbersicht.bin" in headers["content-disposition"]

    moved = assistant.call("move_mail_message", {"folder": "INBOX", "uid": 1, "destination": folder})
    assert moved["destination"] == folder
    in_folder = assistant.call("list_mail_messages", {"folder": folder})
    assert [(m["uid"], m["subject"]) for m in in_folder["messages"]] == [(moved["destination_uid"], subject)]
    with Mailbox(services, user, password) as box:
        assert box.uids(folder_wire) == [moved["destination_uid"]] and box.uids("INBOX") == []

    draft = assistant.call("create_draft_mail_message", {"folder": folder, "subject": f"Entwurf für {tag}",
                                                         "text_body": "Noch nicht fertig — später."})
    assert draft["folder"] == folder
    with Mailbox(services, user, password) as box:
        saved = box.fetch(folder_wire, draft["uid"])
        assert saved["Subject"] == f"Entwurf für {tag}"
        assert saved.get_body(("plain",)).get_content().strip() == "Noch nicht fertig — später."

    request = {"to": "carol@example.test", "subject": f"Réponse ✓ {tag}", "text_body": f"Ça va? 日本語 {tag}",
               "idempotency_key": f"acceptance-{tag}"}
    sent = assistant.call("send_mail_message", request)
    assert sent["status"] == "sent"
    with Mailbox(services, "carol@example.test", "carolpw") as carol:
        (arrived,) = carol.wait_for("INBOX", "SUBJECT", tag)
        received = carol.fetch("INBOX", arrived)
    # The same idempotency_key again: reported as already sent, not sent twice.
    again = assistant.call("send_mail_message", request)
    assert (again["status"], again["message_id"], again["sent_uid"]) == (
        "already_sent", sent["message_id"], sent["sent_uid"])
    time.sleep(1)
    with Mailbox(services, "carol@example.test", "carolpw") as carol:
        assert carol.uids("INBOX", "SUBJECT", tag) == [arrived]
    with Mailbox(services, user, password) as box:
        assert box.uids("Sent") == [sent["sent_uid"]]
    assert received["Message-ID"] == sent["message_id"]
    assert received["Subject"] == f"Réponse ✓ {tag}"
    assert received.get_body(("plain",)).get_content().strip() == f"Ça va? 日本語 {tag}"
    assert "Acceptance Test" in received["From"]
    assert_clean_log(deployment.daemon)


def test_expired_access_token_is_refreshed_by_the_client(services: Services, daemon_factory: Any,
                                                         assistants: Any) -> None:
    """
    With a 2-second access token, the mcp client's next call after expiry
    goes through the refresh grant (no second login) and still succeeds.
    """
    daemon = daemon_factory(services, "--access-token-lifetime", "2")
    client = generate_client(daemon.state_dir, services)
    (user, password), = fresh_users(services, 1)
    raw, _ = message(user, "Acceptance refresh", "Still readable after the token expired.\n")
    services.deliver(user, raw)
    assistant = assistants(daemon, client, "confidential", "legacy", user, password)
    check_login(assistant, "legacy")
    first = assistant.raw_call("list_mail_messages", {"folder": "INBOX"})
    assert first["is_error"] is False and first["logins"] == 1
    time.sleep(3)
    second = assistant.raw_call("list_mail_messages", {"folder": "INBOX"})
    assert second["is_error"] is False, second
    assert [m["subject"] for m in second["structured"]["messages"]] == ["Acceptance refresh"]
    assert second["logins"] == 1
    assert any(r["url"] == daemon.base_url + "/oauth/token" for r in second["requests"]), second["requests"]
    assert_clean_log(daemon)


def test_attachment_links_are_bound_to_their_owner(services: Services, deployment: SimpleNamespace,
                                                   assistants: Any) -> None:
    """
    attachment_urls accept only live links this server issued to the same
    user: another user's link, a tampered link and a foreign URL are isError
    results and nothing is sent or saved; the owner's own link is attached
    byte-exact to a draft.
    """
    (owner, owner_pw), (other, other_pw) = fresh_users(services, 2)
    tag = uuid.uuid4().hex[:8]
    services.deliver(owner, message(owner, f"Linked {tag}", "With attachment.\n", BLOB)[0])
    first = assistants(deployment.daemon, deployment.clients["confidential"], "confidential", "legacy",
                       owner, owner_pw)
    second = assistants(deployment.daemon, deployment.clients["public"], "public", "2026-07-28",
                        other, other_pw)
    url = first.call("get_mail_attachment_link", {"folder": "INBOX", "uid": 1, "part": "2"})["url"]
    assert download(url)[0] == BLOB

    mail = {"to": "bob@example.test", "subject": f"Not sent {tag}", "text_body": "x"}
    for tool in ("send_mail_message", "create_draft_mail_message"):
        refused = second.raw_call(tool, {**mail, "attachment_urls": [url]})
        assert refused["is_error"] is True and "attachment_urls" in refused["texts"][0], refused
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    for bad in (tampered, "https://example.com/blob.bin"):
        refused = first.raw_call("send_mail_message", {**mail, "attachment_urls": [bad]})
        assert refused["is_error"] is True and "attachment_urls" in refused["texts"][0], refused
        # The refusal tells the model where valid links come from.
        assert "get_mail_attachment_link" in refused["texts"][0]

    draft = first.call("create_draft_mail_message", {"subject": f"Keep {tag}", "attachment_urls": [url]})
    time.sleep(1)
    with Mailbox(services, owner, owner_pw) as box:
        saved = box.fetch("Drafts", draft["uid"])
        (attached,) = list(saved.iter_attachments())
        assert attached.get_filename() == "blob.bin" and attached.get_content() == BLOB
        assert box.uids("Sent") == [] and box.uids("Drafts") == [draft["uid"]]
    with Mailbox(services, other, other_pw) as box:
        assert box.uids("Sent") == [] and box.uids("Drafts") == []
    with Mailbox(services, "bob@example.test", "bobpw") as bob:
        assert bob.uids("INBOX", "SUBJECT", tag) == []
    assert_clean_log(deployment.daemon)


@pytest.mark.parametrize("token", ["refresh_token", "access_token"])
def test_revocation_ends_the_grant_at_once(services: Services, deployment: SimpleNamespace,
                                           assistants: Any, token: str) -> None:
    """
    Revoking the refresh token or the access token at /oauth/revoke stops
    the current access token at once: the mcp client's next call is
    answered 401, so it logs in again, and then the call succeeds.
    """
    (user, password), = fresh_users(services, 1)
    services.deliver(user, message(user, "Revocation", "x\n")[0])
    assistant = assistants(deployment.daemon, deployment.clients["confidential"], "confidential", "auto",
                           user, password)
    first = assistant.raw_call("list_mail_messages", {"folder": "INBOX"})
    assert first["is_error"] is False and first["logins"] == 1
    assert assistant.command({"revoke": token}) == {"status": 200}
    second = assistant.raw_call("list_mail_messages", {"folder": "INBOX"})
    assert second["is_error"] is False, second
    assert [m["subject"] for m in second["structured"]["messages"]] == ["Revocation"]
    assert second["logins"] == 2, second["requests"]
    assert_clean_log(deployment.daemon)


def test_tokens_survive_a_daemon_restart(services: Services, tmp_path: Path, assistants: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The key ring and the SQLite grant store live in the state directory: a
    daemon restarted on the same state directory and address serves the
    same stateless mcp client with no new login.  Both stops, each with a
    pooled TLS IMAP connection to log out, leave no crash in the log.
    """
    state = tmp_path / "restart-state"
    (user, password), = fresh_users(services, 1)
    services.deliver(user, message(user, "Before and after", "x\n")[0])
    first = Daemon.start(state, services)
    try:
        client = generate_client(state, services)
        assistant = assistants(first, client, "confidential", "legacy", user, password)
        before = assistant.raw_call("list_mail_messages", {"folder": "INBOX"})
        assert before["is_error"] is False and before["logins"] == 1
    finally:
        first.stop()
    # A clean stop with a pooled TLS IMAP connection: no crash while logging out.
    assert_clean_log(first)
    # The restarted daemon appends to the same log file.
    offset = len(first.log_text())
    monkeypatch.setattr(harness, "free_port", lambda: first.port)
    second = Daemon.start(state, services)
    try:
        after = assistant.raw_call("list_mail_messages", {"folder": "INBOX"})
        assert after["is_error"] is False, after
        assert [m["subject"] for m in after["structured"]["messages"]] == ["Before and after"]
        assert after["logins"] == 1
    finally:
        second.stop()
    assert_clean_log(second, offset)


def post_json(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("www-authenticate")


def post_form(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_scale_out_two_processes_share_redis(services: Services, tmp_path: Path, daemon_factory: Any,
                                             assistants: Any) -> None:
    """
    Two daemon processes behind one base URL, sharing the key ring and a
    Redis store: a login at one is honoured by the other, a refresh at one
    rotates for both, the just-rotated refresh token replayed at the other
    within the grace gets the same successor, and replaying a token two
    generations old revokes the family everywhere.
    """
    state = tmp_path / "shared-state"
    one = daemon_factory(services, "--store", services.redis_url, state_dir=state)
    two = daemon_factory(services, "--store", services.redis_url, "--base-url", one.base_url, state_dir=state)
    client = generate_client(state, services)
    (user, password), = fresh_users(services, 1)
    services.deliver(user, message(user, "Seen by both", "x\n")[0])
    assistant = assistants(one, client, "confidential", "auto", user, password)
    assert assistant.call("list_mail_messages", {})["total"] == 1
    tokens = assistant.tokens()

    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "list_mail_messages", "arguments": {"folder": "INBOX"}}}
    headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}
    status, answer = post_json(two.base_url + "/mcp", call,
                               {**headers, "authorization": "Bearer " + tokens["access_token"]})
    assert status == 200, answer
    result = answer["result"]
    assert result["isError"] is False
    assert [m["subject"] for m in result["structuredContent"]["messages"]] == ["Seen by both"]
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]

    auth = {"client_id": client["client_id"], "client_secret": client["client_secret"]}
    status, fresh = post_form(two.base_url + "/oauth/token", {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], **auth})
    assert status == 200, fresh
    status, answer = post_json(one.base_url + "/mcp", call,
                               {**headers, "authorization": "Bearer " + fresh["access_token"]})
    assert status == 200 and answer["result"]["isError"] is False
    status, again = post_form(one.base_url + "/oauth/token", {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], **auth})
    assert status == 200 and again["refresh_token"] == fresh["refresh_token"], again
    status, newer = post_form(one.base_url + "/oauth/token", {
        "grant_type": "refresh_token", "refresh_token": fresh["refresh_token"], **auth})
    assert status == 200, newer
    status, reuse = post_form(two.base_url + "/oauth/token", {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], **auth})
    assert (status, reuse["error"]) == (400, "invalid_grant")
    for daemon in (one, two):
        status, challenge = post_json(daemon.base_url + "/mcp", call,
                                      {**headers, "authorization": "Bearer " + fresh["access_token"]})
        assert status == 401 and challenge.startswith(
            f'Bearer resource_metadata="{one.base_url}/.well-known/oauth-protected-resource/mcp"')
    assert_clean_log(one)
    assert_clean_log(two)


def test_starttls_mail_servers(services: Services, deployment: SimpleNamespace, assistants: Any) -> None:
    """
    A client provisioned for STARTTLS on IMAP (143) and SMTP submission
    (587-style) logs in, reads, replies (threading headers from
    get_mail_message) and flags exactly like the implicit-TLS one.
    """
    client = generate_client(deployment.daemon.state_dir, services, imap_security="starttls",
                             smtp_security="starttls")
    (user, password), = fresh_users(services, 1)
    tag = uuid.uuid4().hex[:8]
    raw, original_id = message(user, f"Over STARTTLS {tag}", "x\n")
    services.deliver(user, raw)
    assistant = assistants(deployment.daemon, client, "confidential", "2026-07-28", user, password)
    check_login(assistant, "2026-07-28")
    listed = assistant.call("list_mail_messages", {"folder": "INBOX"})
    assert [m["subject"] for m in listed["messages"]] == [f"Over STARTTLS {tag}"]
    # A reply, threaded with what get_mail_message reported, then marked answered.
    original = assistant.call("get_mail_message", {"folder": "INBOX", "uid": 1})
    assert original["message_id"] == original_id
    sent = assistant.call("send_mail_message", {
        "to": "dave@example.test", "subject": f"Re: Over STARTTLS {tag}", "text_body": "Sent over STARTTLS.",
        "in_reply_to": original["message_id"], "references": [*original["references"], original["message_id"]]})
    assert sent["status"] == "sent" and sent["sent_folder"] == "Sent"
    with Mailbox(services, "dave@example.test", "davepw") as dave:
        (arrived,) = dave.wait_for("INBOX", "SUBJECT", tag)
        reply = dave.fetch("INBOX", arrived)
    assert reply["Message-ID"] == sent["message_id"]
    assert (reply["In-Reply-To"], reply["References"]) == (original_id, original_id)
    flags = assistant.call("update_mail_message_flags", {"folder": "INBOX", "uid": 1, "add": "\\Answered",
                                                         "uidvalidity": original["uidvalidity"]})
    assert "\\Answered" in flags["flags"]
    assert assistant.call("list_mail_messages", {})["messages"][0]["answered"] is True
    assert_clean_log(deployment.daemon)
