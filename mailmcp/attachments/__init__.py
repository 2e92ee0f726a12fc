"""
Attachment storage: content-addressed per owner, handed out as signed,
expiring, owner-bound links, and never fetched from arbitrary URLs
(docs/architecture.rst, Attachments).  `build_attachments` is what the service tree calls;
`mailmcp.attachments._helpers` is what tools call.
"""

from ._common import (
    AttachmentError,
    AttachmentNotFound,
    AttachmentRefused,
    AttachmentTooLarge,
    Limits,
    ResolvedAttachment,
    StoredObject,
    content_disposition,
    safe_content_type,
    sanitise_filename,
)
from ._local import AttachmentDownloads, LocalAttachmentStore
from ._s3 import S3AttachmentStore, S3Settings, make_s3_client
from ._service import Attachments, Sweeper, ThreadPoolService, build_attachments

__all__ = [
    "AttachmentDownloads",
    "AttachmentError",
    "AttachmentNotFound",
    "AttachmentRefused",
    "AttachmentTooLarge",
    "Attachments",
    "Limits",
    "LocalAttachmentStore",
    "ResolvedAttachment",
    "S3AttachmentStore",
    "S3Settings",
    "StoredObject",
    "Sweeper",
    "ThreadPoolService",
    "build_attachments",
    "content_disposition",
    "make_s3_client",
    "safe_content_type",
    "sanitise_filename",
]
