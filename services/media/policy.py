"""The limits of uploads, read once from the settings: image sizes, photos per profile, quota, rate, clean-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.core.config import Settings
from services.media.images import ImageLimits
from services.realtime.counters import Rate


def parse_sides(text: str) -> tuple[int, ...]:
    """`IMAGE_THUMBNAIL_SIDES` ("128,512") as ascending sides; ValueError for anything else."""
    try:
        sides = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"IMAGE_THUMBNAIL_SIDES must be comma-separated integers, got {text!r}") from None
    if any(side < 16 or side > 4096 for side in sides):
        raise ValueError("IMAGE_THUMBNAIL_SIDES: each side must be between 16 and 4096 pixels")
    return tuple(sides)


UNLIMITED_UPLOADS = Rate("uploads", 0, 3600.0, "uploads")


@dataclass(frozen=True)
class MediaPolicy:
    image: ImageLimits = field(default_factory=ImageLimits)
    image_concurrency: int = 2
    max_profile_photos: int = 6
    quota_bytes: int = 0  # 0: no quota
    upload_rate: Rate = UNLIMITED_UPLOADS
    unsent_attachment_ttl_s: float = 86400.0
    sweep_interval_s: float = 600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaPolicy:
        return cls(
            image=ImageLimits(
                max_side=max(16, settings.image_max_side),
                thumbnail_sides=parse_sides(settings.image_thumbnail_sides),
                max_pixels=settings.image_max_pixels,
            ),
            image_concurrency=max(1, settings.image_concurrency),
            max_profile_photos=max(1, settings.max_profile_photos),
            quota_bytes=settings.media_quota_bytes,
            upload_rate=Rate("uploads", settings.uploads_per_hour, 3600.0, "uploads"),
            unsent_attachment_ttl_s=settings.unsent_attachment_ttl_s,
            sweep_interval_s=max(1.0, settings.media_sweep_interval_s),
        )
