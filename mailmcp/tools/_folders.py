"""
The folder tools: ``create_mailbox``, ``rename_mailbox`` and
``delete_mailbox``.

Names are checked before anything reaches the server: no control
characters, no ``*`` or ``%`` (LIST wildcards), no empty or ``.``/``..``
level, and no hierarchy delimiter inside a level — the delimiter is the
server's own, read from LIST.  Non-ASCII names go out as modified UTF-7
(`mailmcp.mail.imap._wire.encode_mailbox`), always quoted.

Deleting is refused unless the folder is empty (STATUS MESSAGES 0), has no
subfolders and is neither INBOX nor a special-use folder (\\Sent, \\Trash …),
so a delete can never take mail with it.  Renaming INBOX or a special-use
folder is refused too: other mail programs find them by those names.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, cast

from pydantic import Field

from .._scopes import ORGANIZE
from .._toolkit import Tool, ToolContext, ToolError, imap_tool_error
from ..mail._mailbox_api import (
    IMAPAuthError,
    IMAPError,
    IMAPSession,
    MailboxInfo,
)
from ._reading import Folder, _In, _Out

T = TypeVar("T")


class FolderSession(IMAPSession, Protocol):
    """The folder commands `mailmcp.mail.imap._session.Session` adds to `IMAPSession`."""

    async def create_mailbox(self, mailbox: str) -> None: ...

    async def rename_mailbox(self, old: str, new: str) -> None: ...

    async def delete_mailbox(self, mailbox: str) -> None: ...


MAX_LEVEL_CHARS = 200
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f*%]")

Leaf = Field(
    min_length=1,
    max_length=MAX_LEVEL_CHARS,
    description="The new folder's own name (one level, no hierarchy separator), e.g. "
    '"Rechnungen" or "Заметки".',
)


# -- models -------------------------------------------------------------------


class CreateMailboxInput(_In):
    name: str = Leaf
    parent: Folder | None = Field(
        default=None,
        description="Existing folder to create it in, as list_mailboxes names it; top level when "
        "absent.",
    )


class RenameMailboxInput(_In):
    name: Folder = Field(description="The folder to rename, as list_mailboxes names it.")
    new_name: Folder = Field(
        description="Its full new name, with the server's separator between levels (see "
        'list_mailboxes `delimiter`), e.g. "Archive/2024/Rechnungen". Subfolders move along.'
    )


class DeleteMailboxInput(_In):
    name: Folder = Field(
        description="The folder to delete, as list_mailboxes names it. It must be empty and "
        "have no subfolders."
    )


class CreateMailboxOutput(_Out):
    name: str = Field(description="Full name of the new folder, to pass as `folder`.")
    delimiter: str | None
    created: bool


class RenameMailboxOutput(_Out):
    old_name: str
    name: str = Field(description="The folder's full new name.")
    delimiter: str | None
    renamed: bool


class DeleteMailboxOutput(_Out):
    name: str
    deleted: bool


# -- helpers --------------------------------------------------------------------


async def _run_write(ctx: ToolContext, operation: Callable[[IMAPSession], Awaitable[T]]) -> T:
    try:
        result: T = await ctx.services.imap.run(ctx.account, operation, read_only=False)
    except IMAPError as e:
        raise imap_tool_error(e) from None
    return result


def check_level(level: str, delimiter: str | None, what: str = "folder name") -> None:
    """One level of a folder name, or `ToolError` saying what is wrong with it."""
    if not level or not level.strip():
        raise ToolError(f'The {what} is empty; give a name like "Projects".')
    if level != level.strip():
        raise ToolError(f"The {what} {level!r} starts or ends with spaces; remove them.")
    if _BAD_CHARS.search(level):
        raise ToolError(
            f"The {what} {level!r} contains control characters, '*' or '%', which folder names "
            "cannot hold."
        )
    if delimiter and delimiter in level:
        raise ToolError(
            f"The {what} {level!r} contains the server's folder separator {delimiter!r}. "
            "Use `parent` to create a subfolder."
        )
    if level in (".", ".."):
        raise ToolError(f"{level!r} is not a usable {what}.")
    if len(level) > MAX_LEVEL_CHARS:
        raise ToolError(f"The {what} is longer than {MAX_LEVEL_CHARS} characters.")


def _find(boxes: Sequence[MailboxInfo], name: str) -> MailboxInfo | None:
    for box in boxes:
        if box.name == name or (name.upper() == "INBOX" and box.name.upper() == "INBOX"):
            return box
    return None


def _delimiter(boxes: Sequence[MailboxInfo]) -> str | None:
    """The server's hierarchy delimiter: INBOX's, else the first one LIST gave."""
    inbox = _find(boxes, "INBOX")
    if inbox is not None and inbox.delimiter:
        return inbox.delimiter
    return next((b.delimiter for b in boxes if b.delimiter), None)


def _children(boxes: Sequence[MailboxInfo], box: MailboxInfo) -> list[str]:
    if not box.delimiter:
        return []
    prefix = box.name + box.delimiter
    return [b.name for b in boxes if b.name.startswith(prefix)]


def _protected(box: MailboxInfo, action: str) -> None:
    if box.name.upper() == "INBOX":
        raise ToolError(f"INBOX cannot be {action}; it is where new mail arrives.")
    if box.special_use:
        raise ToolError(
            f"Folder {box.name!r} is the account's {box.special_use} folder; it cannot be "
            f"{action} (other mail programs rely on it). Nothing was changed."
        )


def _missing(name: str) -> ToolError:
    return ToolError(
        f"There is no folder {name!r}. Call list_mailboxes to see the exact folder names; they "
        "are case-sensitive and use the server's separator."
    )


def _refused(action: str, name: str, error: IMAPError) -> IMAPError | ToolError:
    """
    What to raise when the server answered C{action} on folder C{name} with
    C{error}: a lost connection or login stays itself (the pool and the tool
    layer report those), a refusal becomes a `ToolError` quoting the server.
    """
    if error.transient or isinstance(error, IMAPAuthError):
        return error
    detail = getattr(error, "text", "") or error.message
    return ToolError(f"The mail server refused to {action} folder {name!r}: {detail}")


# -- create_mailbox ---------------------------------------------------------------


async def create_mailbox(ctx: ToolContext, arguments: CreateMailboxInput) -> CreateMailboxOutput:
    leaf, parent = arguments.name, arguments.parent
    check_level(leaf, None)

    async def operation(session: IMAPSession) -> CreateMailboxOutput:
        boxes = await session.list_mailboxes()
        if parent is not None:
            container = _find(boxes, parent)
            if container is None:
                raise _missing(parent)
            if any(f.lower() == "\\noinferiors" for f in container.flags):
                raise ToolError(f"Folder {parent!r} cannot hold subfolders on this server.")
            delimiter = container.delimiter
            if not delimiter:
                raise ToolError("This mail server has no folder hierarchy; create it at top level.")
            check_level(leaf, delimiter)
            full = f"{container.name}{delimiter}{leaf}"
        else:
            delimiter = _delimiter(boxes)
            check_level(leaf, delimiter)
            full = leaf
        if _find(boxes, full) is not None:
            raise ToolError(f"A folder named {full!r} already exists. Nothing was changed.")
        try:
            await cast(FolderSession, session).create_mailbox(full)
        except IMAPError as e:
            raise _refused("create", full, e) from None
        return CreateMailboxOutput(name=full, delimiter=delimiter, created=True)

    return await _run_write(ctx, operation)


# -- rename_mailbox ---------------------------------------------------------------


async def rename_mailbox(ctx: ToolContext, arguments: RenameMailboxInput) -> RenameMailboxOutput:
    name, new_name = arguments.name, arguments.new_name

    async def operation(session: IMAPSession) -> RenameMailboxOutput:
        boxes = await session.list_mailboxes()
        box = _find(boxes, name)
        if box is None:
            raise _missing(name)
        _protected(box, "renamed")
        delimiter = box.delimiter or _delimiter(boxes)
        levels = new_name.split(delimiter) if delimiter else [new_name]
        for level in levels:
            check_level(level, None, "new folder name")
        if new_name == box.name:
            raise ToolError(f"Folder {name!r} already has that name. Nothing was changed.")
        if delimiter and new_name.startswith(box.name + delimiter):
            raise ToolError("A folder cannot be moved inside itself. Nothing was changed.")
        if new_name.upper() == "INBOX" or _find(boxes, new_name) is not None:
            raise ToolError(f"A folder named {new_name!r} already exists. Nothing was changed.")
        try:
            await cast(FolderSession, session).rename_mailbox(box.name, new_name)
        except IMAPError as e:
            raise _refused("rename", name, e) from None
        return RenameMailboxOutput(
            old_name=box.name, name=new_name, delimiter=delimiter, renamed=True
        )

    return await _run_write(ctx, operation)


# -- delete_mailbox ---------------------------------------------------------------


async def delete_mailbox(ctx: ToolContext, arguments: DeleteMailboxInput) -> DeleteMailboxOutput:
    name = arguments.name

    async def operation(session: IMAPSession) -> DeleteMailboxOutput:
        boxes = await session.list_mailboxes()
        box = _find(boxes, name)
        if box is None:
            raise _missing(name)
        _protected(box, "deleted")
        children = _children(boxes, box)
        if children or any(f.lower() == "\\haschildren" for f in box.flags):
            shown = ", ".join(repr(c) for c in children[:5]) or "some"
            raise ToolError(
                f"Folder {name!r} has subfolders ({shown}); delete or move them first. "
                "Nothing was changed."
            )
        if not box.selectable:
            raise ToolError(
                f"Folder {name!r} cannot be opened, so its emptiness cannot be checked."
            )
        not_empty = _not_empty(name, await _message_count(session, box.name))
        if not_empty is not None:
            raise not_empty
        folders = cast(FolderSession, session)
        # Mail filed into the folder between that check and DELETE (a Sieve
        # rule, another client) would be deleted with it.  So the folder is
        # first set aside under a name nobody files into, checked again there,
        # and only then deleted; mail that reached it in between goes back
        # with it under its own name.
        aside = _aside_name(boxes, box)
        try:
            await folders.rename_mailbox(box.name, aside)
        except IMAPError as e:
            raise _refused("delete", name, e) from None
        try:
            count = await _message_count(session, aside)
        except IMAPError:
            count = None
        refusal: IMAPError | None = None
        if count == 0:
            try:
                await folders.delete_mailbox(aside)
                return DeleteMailboxOutput(name=box.name, deleted=True)
            except IMAPError as e:
                refusal = e
        await _put_back(folders, aside, box.name, name)
        if refusal is None:
            raise _not_empty(name, count) or ToolError(f"Folder {name!r} was not deleted.")
        raise _refused("delete", name, refusal)

    return await _run_write(ctx, operation)


async def _message_count(session: IMAPSession, mailbox: str) -> int | None:
    status = await session.status(mailbox, ("MESSAGES",))
    return {k.upper(): v for k, v in status.items()}.get("MESSAGES")


async def _put_back(folders: FolderSession, aside: str, original: str, name: str) -> None:
    """Give a folder set aside for deletion its name back (mail reached it, or DELETE failed)."""
    try:
        await folders.rename_mailbox(aside, original)
    except IMAPError:
        raise ToolError(
            f"Folder {name!r} was set aside as {aside!r} to be deleted and could not get its "
            "name back; its messages are untouched there. Nothing was deleted."
        ) from None


def _not_empty(name: str, count: int | None) -> ToolError | None:
    """Why a folder holding C{count} messages (None: not said) is not deleted; None if empty."""
    if count is None:
        return ToolError(f"The mail server did not say whether {name!r} is empty; not deleting.")
    if count:
        return ToolError(
            f"Folder {name!r} still holds {count} message(s); move or delete them first. "
            "Nothing was changed."
        )
    return None


def _aside_name(boxes: Sequence[MailboxInfo], box: MailboxInfo) -> str:
    """A sibling name for C{box} that no folder has (random, so nobody files into it)."""
    delimiter = box.delimiter or ""
    parent = (
        box.name.rsplit(delimiter, 1)[0] + delimiter if delimiter and delimiter in box.name else ""
    )
    taken = {b.name for b in boxes}
    while True:
        candidate = f"{parent}mailmcp-deleting-{secrets.token_hex(6)}"
        if candidate not in taken:
            return candidate


def _tool(name: str, title: str, description: str, handler: Any, inp: Any, out: Any,
          destructive: bool) -> Tool[Any, Any]:  # fmt: skip
    return Tool(
        name=name,
        title=title,
        description=description,
        input_model=inp,
        output_model=out,
        handler=handler,
        read_only=False,
        destructive=destructive,
        # A repeat finds the work done and changes nothing (it answers an error).
        idempotent=True,
        open_world=True,
        # Managing folders is organising (even deleting one: it must be empty).
        scopes=frozenset({ORGANIZE}),
    )


TOOLS: list[Tool[Any, Any]] = [
    _tool(
        "create_mailbox",
        "Create a folder",
        "Create a mail folder: `name` is the new folder's own name, created inside `parent` "
        '(an existing folder) or at the top level. Any language is fine (e.g. "Заметки").',
        create_mailbox,
        CreateMailboxInput,
        CreateMailboxOutput,
        destructive=False,
    ),
    _tool(
        "rename_mailbox",
        "Rename or move a folder",
        "Rename a folder, or move it elsewhere in the hierarchy: `new_name` is the full new "
        "name. Its messages and subfolders go with it. INBOX and special-use folders (Sent, "
        "Trash …) cannot be renamed.",
        rename_mailbox,
        RenameMailboxInput,
        RenameMailboxOutput,
        destructive=False,
    ),
    _tool(
        "delete_mailbox",
        "Delete an empty folder",
        "Delete a folder that is empty and has no subfolders (move or delete its messages "
        "first). INBOX and special-use folders (Sent, Trash …) cannot be deleted.",
        delete_mailbox,
        DeleteMailboxInput,
        DeleteMailboxOutput,
        destructive=True,
    ),
]
