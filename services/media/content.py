"""What an uploaded file is: recognised by its leading bytes, never by the client's Content-Type or file
name, so an HTML or script file cannot be stored under an image name and served back to a browser."""

from __future__ import annotations

IMAGE_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
ATTACHMENT_TYPES = {**IMAGE_TYPES, "image/gif": "gif", "application/pdf": "pdf", "text/plain": "txt"}
# A stored file's name ends with the extension of its verified type: the type back from a name.
TYPE_BY_EXTENSION = {extension: content_type for content_type, extension in ATTACHMENT_TYPES.items()}


def type_of_path(path: str) -> str | None:
    """The type a stored file's extension stands for (`a/x.128.jpg` -> image/jpeg), or None."""
    return TYPE_BY_EXTENSION.get(path.rpartition(".")[2].lower())


def sniff_content_type(data: bytes) -> str | None:
    """The content type that the bytes themselves prove, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def looks_like_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return "\x00" not in text
