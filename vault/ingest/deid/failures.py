"""Why an image cannot be served de-identified: one API code (``not_deidentifiable``, 403),
with messages that say which case it is and never quote the file."""

from __future__ import annotations

from vault.errors import NotDeidentifiable


class UnsupportedFormat(NotDeidentifiable):
    default_message = "images of this content type cannot be de-identified for research"


class Malformed(NotDeidentifiable):
    default_message = "the stored image does not parse as its format and cannot be de-identified"


class MetadataInStream(NotDeidentifiable):
    default_message = "an embedded image stream carries metadata and cannot be de-identified"


class TooLargeToDeidentify(NotDeidentifiable):
    default_message = "the stored image is too large to be de-identified in memory"
