"""Every uploaded image is decoded and encoded again by Pillow before it is stored.

What a camera or an editor writes beside the pixels never reaches the disk: EXIF (the GPS position, the
camera's serial number, the time), XMP, comments, thumbnails embedded in the EXIF, ICC profiles. The
encoder is handed bare pixels, so nothing is left to forget. Before that:

- the EXIF orientation is applied, so the picture stands as the phone showed it;
- a colour profile other than sRGB is converted to sRGB (the file is then written without a profile,
  which browsers read as sRGB); a profile that cannot be read is dropped;
- animated images (GIF, APNG, WebP) keep their first frame;
- the longest side is bounded (`IMAGE_MAX_SIDE`) and thumbnails are made (`IMAGE_THUMBNAIL_SIDES`);
- images with real transparency are written as PNG, all others as JPEG.

What can go wrong with hostile bytes is decided before any pixel is decoded: the declared size is checked
against `IMAGE_MAX_PIXELS` right after the header is read (a 20000x20000 PNG of a few kilobytes would take
1.6 GB to decode), and truncated or malformed data fails the decoder, never the server. Decoding runs in a
pool of `IMAGE_CONCURRENCY` threads (Pillow releases the GIL while it decodes and resizes), never on the
event loop, and at most that many images are decoded at once, whatever the number of uploads.
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import ExifTags, Image, ImageCms

from services.core.errors import Invalid

log = logging.getLogger("chat.media")

JPEG_QUALITY = 85
# Formats Pillow may try: the types content.py lets in. Nothing else (no PSD, TIFF, EPS...) is parsed even
# if its bytes were dressed up as one of these.
DECODERS = ("JPEG", "PNG", "WEBP", "GIF")
# What a decoder raises on bytes it cannot make sense of (Pillow's own UnidentifiedImageError is an
# OSError; truncated data is an OSError too; some plugins let struct, zlib or EOF errors through).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    zlib.error,
    ImageCms.PyCMSError,
)
# EXIF orientation -> the transposition that undoes it (EXIF 2.3, tag 0x0112).
ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def invalid_image() -> Invalid:
    return Invalid("The image cannot be read: truncated, malformed or of another type", code="invalid_image")


@dataclass(frozen=True)
class ImageLimits:
    max_side: int = 2048
    thumbnail_sides: tuple[int, ...] = (128, 512)
    max_pixels: int = 25_000_000


@dataclass(frozen=True)
class ProcessedImage:
    """An image as it will be stored: the bounded image and its thumbnails, encoded alike."""

    content_type: str  # image/jpeg or image/png
    width: int
    height: int
    data: bytes
    thumbnails: dict[int, bytes] = field(default_factory=dict)  # longest side -> bytes

    @property
    def total_bytes(self) -> int:
        return len(self.data) + sum(len(t) for t in self.thumbnails.values())


class ImagePipeline:
    """Re-encodes uploads in its own small thread pool: at most `concurrency` images in memory at once."""

    def __init__(self, limits: ImageLimits | None = None, concurrency: int = 2) -> None:
        self.limits = limits or ImageLimits()
        self._executor = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="image")

    async def process(self, data: bytes) -> ProcessedImage:
        """The re-encoded image, or Invalid (`invalid_image`, `image_too_many_pixels`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, reencode, data, self.limits)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def reencode(data: bytes, limits: ImageLimits) -> ProcessedImage:
    """Decode, clean, bound and encode one image (blocking: run it in the pipeline's pool)."""
    try:
        with Image.open(io.BytesIO(data), formats=DECODERS) as source:
            _check_dimensions(source.size, limits.max_pixels)
            if source.format == "JPEG":
                # Let the JPEG decoder scale by 1/2, 1/4 or 1/8 while decoding when the result is bigger
                # than what is kept anyway: a 12 MP photo then never lives in memory at full size.
                source.draft("RGB", (limits.max_side, limits.max_side))
            source.load()  # the first frame only, for an animation
            image = _upright(source, _orientation(source))
            image = _to_srgb(image, source.info.get("icc_profile"))
        image.thumbnail((limits.max_side, limits.max_side), Image.Resampling.LANCZOS)
        content_type, encode = ("image/png", _png) if image.mode == "RGBA" else ("image/jpeg", _jpeg)
        thumbnails: dict[int, bytes] = {}
        for side in limits.thumbnail_sides:
            small = image.copy()
            small.thumbnail((side, side), Image.Resampling.LANCZOS)
            thumbnails[side] = encode(small)
        return ProcessedImage(content_type, image.width, image.height, encode(image), thumbnails)
    except Image.DecompressionBombError:
        raise _too_many_pixels(limits.max_pixels) from None
    except DECODE_ERRORS as exc:
        log.debug("image refused: %r", exc)
        raise invalid_image() from None


def _too_many_pixels(max_pixels: int) -> Invalid:
    return Invalid(f"The image declares more than {max_pixels} pixels", code="image_too_many_pixels")


def _check_dimensions(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise invalid_image()
    if width * height > max_pixels:
        raise _too_many_pixels(max_pixels)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 when there is none, or when the EXIF block is unreadable)."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
        return int(value) if value in ORIENTATIONS else 1
    except DECODE_ERRORS:
        return 1


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """The pixels as the EXIF orientation says to show them, in RGB or RGBA."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if image.mode.startswith("I;16"):
        # 16-bit greyscale: scaled to 8 bits (a plain conversion would clip everything above 255 to white).
        image = image.convert("I").point(lambda value: value / 256, "L")
    elif image.mode in ("I", "F"):
        image = image.convert("L")
    if image.mode == "CMYK" and image.info.get("icc_profile"):
        pass  # converted with its profile by _to_srgb
    else:
        image = image.convert("RGBA" if has_alpha else "RGB")
    if image.mode == "RGBA" and image.getchannel("A").getextrema()[0] == 255:
        image = image.convert("RGB")  # an alpha channel that hides nothing: a smaller JPEG will do
    transposition = ORIENTATIONS.get(orientation)
    return image.transpose(transposition) if transposition is not None else image


def _to_srgb(image: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """The image in sRGB: converted from its embedded profile when it has another one."""
    output_mode = "RGB" if image.mode == "CMYK" else image.mode
    if icc_profile and not _is_srgb(icc_profile):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode=output_mode)
            if converted is not None:
                image = converted
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
            log.info("colour profile ignored: %s", exc)
    return image.convert(output_mode) if image.mode != output_mode else image


def _is_srgb(icc_profile: bytes) -> bool:
    try:
        description = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc_profile)))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return False
    return "srgb" in description.lower()


def _bare(image: Image.Image) -> Image.Image:
    """The same pixels with no metadata left for an encoder to copy (some fall back on `info`)."""
    image.info = {}
    return image


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    _bare(image).save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
    return out.getvalue()


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    _bare(image).save(out, format="PNG", optimize=True)
    return out.getvalue()
