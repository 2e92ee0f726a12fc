"""
reply_mail_message and forward_mail_message end to end: the ``twistd
mailmcp`` daemon, an OAuth login with a provisioned client, the real ``mcp``
client (``acceptance_client.py``) calling the tools, Postfix delivering and
Dovecot holding the mail, checked by another IMAP client.
"""

from __future__ import annotations

import email.policy
import uuid
from email.message import EmailMessage
from types import SimpleNamespace
from typing import Any

import pytest

from tests.harness import Services
from tests.integration.acceptance import BLOB, Mailbox, assert_clean_log, check_login, fresh_users

pytestmark = pytest.mark.integration


def original(sender: str, recipient: str, tag: str) -> tuple[bytes, str]:
    message = EmailMessage()
    message["From"] = f"Anna Berg <{sender}>"
    message["To"] = recipient
    message["Subject"] = f"AW: Re: Budget {tag}"
    message["Date"] = "Thu, 03 Dec 2026 10:05:00 +0100"
    message["Message-ID"] = message_id = f"<{tag}.orig@anna.example.test>"
    message["References"] = f"<{tag}.root@anna.example.test>"
    message.set_content(f"The budget for {tag}.\n")
    message.add_attachment(BLOB, maintype="application", subtype="octet-stream", filename="budget.bin")
    return message.as_bytes(policy=email.policy.SMTP), message_id


def test_reply_forward_and_draft_through_the_daemon(
    services: Services, deployment: SimpleNamespace, assistants: Any
) -> None:
    """
    Through the daemon and the real mcp client: a reply reaches Anna in the
    thread and marks the original \\Answered; a forward reaches Bob with the
    attachment byte-exact and marks it $Forwarded; a draft reply is only in
    Drafts; a bad UID is an isError result; the daemon logs no traceback.
    """
    (me, pw), (anna, anna_pw), (bob, bob_pw) = fresh_users(services, 3)
    tag = uuid.uuid4().hex[:8]
    raw, message_id = original(anna, me, tag)
    services.deliver(me, raw)
    assistant = assistants(deployment.daemon, deployment.clients["confidential"], "confidential", "auto",
                           me, pw)
    check_login(assistant, "auto")
    with Mailbox(services, me, pw) as box:
        (uid,) = box.uids("INBOX")
        uidvalidity = box.examine("INBOX")

    reply = assistant.call("reply_mail_message", {"folder": "INBOX", "uid": uid, "uidvalidity": uidvalidity,
                                                  "text_body": f"Agreed, {tag}."})
    assert (reply["status"], reply["marked_answered"], reply["in_reply_to"]) == ("sent", True, message_id)
    with Mailbox(services, anna, anna_pw) as other:
        (arrived,) = other.wait_for("INBOX", "SUBJECT", tag)
        received = other.fetch("INBOX", arrived)
    assert received["Subject"] == f"Re: Budget {tag}" and received["In-Reply-To"] == message_id
    assert received["References"].split() == [f"<{tag}.root@anna.example.test>", message_id]
    assert list(received.iter_attachments()) == []  # a reply does not send the attachment back

    forward = assistant.call("forward_mail_message", {"folder": "INBOX", "uid": uid, "to": [bob],
                                                      "text_body": "For you."})
    assert (forward["status"], forward["marked_forwarded"]) == ("sent", True)
    with Mailbox(services, bob, bob_pw) as other:
        (arrived,) = other.wait_for("INBOX", "SUBJECT", tag)
        received = other.fetch("INBOX", arrived)
    assert received["Subject"] == f"Fwd: AW: Re: Budget {tag}"
    (attached,) = list(received.iter_attachments())
    assert attached.get_filename() == "budget.bin" and attached.get_content() == BLOB

    draft = assistant.call("reply_mail_message", {"folder": "INBOX", "uid": uid, "text_body": "Later.",
                                                  "draft": True})
    assert draft["status"] == "saved" and draft["draft_folder"] == "Drafts"
    failed = assistant.raw_call("reply_mail_message", {"folder": "INBOX", "uid": uid + 9, "text_body": "x"})
    assert failed["is_error"] is True and "Nothing was sent" in failed["texts"][0]

    with Mailbox(services, me, pw) as box:
        assert {"\\Answered", "$Forwarded"} <= box.flags("INBOX", uid)
        assert box.uids("Drafts") == [draft["draft_uid"]]
        saved = box.fetch("Drafts", draft["draft_uid"])
        assert saved["In-Reply-To"] == message_id and "\\Draft" in box.flags("Drafts", draft["draft_uid"])
        assert len(box.uids("Sent")) == 2  # the reply and the forward, not the draft
    with Mailbox(services, anna, anna_pw) as other:
        assert len(other.uids("INBOX")) == 1  # the draft and the failed call sent nothing
    assert_clean_log(deployment.daemon)
