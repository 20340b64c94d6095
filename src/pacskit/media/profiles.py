"""Media application profiles (PS3.11) and media capacities (PS3.12): what a file-set may contain.

A profile decides the transfer syntaxes a file on the media may have. The writer keeps a stored file
byte for byte when its transfer syntax is one the profile allows, and otherwise re-encodes it:

* to Explicit VR Little Endian (every General Purpose profile allows it): Implicit VR Little Endian,
  Explicit VR Big Endian and Deflated files are re-encoded, compressed files decompressed (a lossy
  source stays flagged Lossy Image Compression "01"; pydicom's handlers do the decoding);
* with ``lossless=True`` and a profile that allows JPEG 2000 lossless (``STD-GEN-*-J2K``),
  uncompressed images are compressed JPEG 2000 lossless instead (pylibjpeg-openjpeg), so more fits
  on one piece of media. JPEG Lossless (Process 14 SV1) cannot be encoded here (no free encoder in the
  Python stack), so the ``-JPEG`` profiles copy or decompress but never compress.
"""

from __future__ import annotations

from dataclasses import dataclass

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"

MB = 1000 * 1000

#: Bytes of user data per media type (``media_type`` of :class:`Profile`): a 74-minute CD-R holds
#: 650 MiB, an 80-minute one 700 MiB (PS3.12 Annex F uses both; we take the smaller), a single-layer
#: DVD 4.7 GB, a single-layer BD 25 GB. ``usb`` is not limited (``None``).
CAPACITY: dict[str, int | None] = {
    "cd": 650 * 1024 * 1024,
    "dvd": 4_700_000_000,
    "bd": 25_025_314_816,
    "usb": None,
}


@dataclass(frozen=True, slots=True)
class Profile:
    """One PS3.11 application profile: its identifier, the transfer syntaxes it allows, and the media
    type it is meant for (the capacity a volume is split at)."""

    id: str
    transfer_syntaxes: tuple[str, ...]
    media_type: str
    description: str

    @property
    def allows_j2k_lossless(self) -> bool:
        return J2K_LOSSLESS in self.transfer_syntaxes

    @property
    def capacity(self) -> int | None:
        return CAPACITY[self.media_type]


_JPEG = (EXPLICIT_VR_LE, JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS_SV1)
_J2K = (EXPLICIT_VR_LE, J2K_LOSSLESS, J2K)

PROFILES: dict[str, Profile] = {
    p.id: p
    for p in (
        Profile("STD-GEN-CD", (EXPLICIT_VR_LE,), "cd", "General Purpose CD-R Interchange (PS3.11 D)"),
        Profile("STD-GEN-DVD-JPEG", _JPEG, "dvd", "General Purpose DVD with JPEG compression (PS3.11 D)"),
        Profile("STD-GEN-DVD-J2K", _J2K, "dvd", "General Purpose DVD with JPEG 2000 compression (PS3.11 D)"),
        Profile("STD-GEN-BD-JPEG", _JPEG, "bd", "General Purpose BD with JPEG compression (PS3.11 D)"),
        Profile("STD-GEN-BD-J2K", _J2K, "bd", "General Purpose BD with JPEG 2000 compression (PS3.11 D)"),
        Profile("STD-GEN-USB-JPEG", _JPEG, "usb", "General Purpose USB and Flash Memory with JPEG (PS3.11 D)"),
        Profile("STD-GEN-USB-J2K", _J2K, "usb", "General Purpose USB and Flash Memory with JPEG 2000 (PS3.11 D)"),
    )
}

DEFAULT_PROFILE = "STD-GEN-CD"


class UnknownProfile(ValueError):
    """A profile identifier this writer does not support (the message lists the ones it does)."""


def get_profile(profile_id: str) -> Profile:
    """The profile named ``profile_id`` (case and surrounding blanks ignored)."""
    key = (profile_id or "").strip().upper()
    try:
        return PROFILES[key]
    except KeyError:
        raise UnknownProfile(f"unsupported media application profile {profile_id!r} "
                             f"(supported: {', '.join(PROFILES)})") from None
