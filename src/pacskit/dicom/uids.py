"""UIDs the toolkit names: transfer syntaxes, Verification, the storage SOP classes.

The uncompressed transfer syntaxes are spelled here as plain strings: the engine uses them on every
association, and a process that only moves bytes (a storescu-like client) is spared the import of
pydicom, which costs ~0.4 s before the first PDU. Everything else comes from pydicom's UID dictionary
on first use (PEP 562 module ``__getattr__``): :data:`ALL_TRANSFER_SYNTAXES` and
:data:`STORAGE_SOP_CLASSES`.
"""

from __future__ import annotations

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

# PS3.5 A.1, A.2, A.3, A.5
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
#: PS3.5 A.4.11: an Explicit VR Little Endian dataset whose encapsulated frames are each deflated (not a
#: deflated dataset, unlike 1.2.840.10008.1.2.1.99). pydicom 3.0 does not list it.
DEFLATED_IMAGE_FRAME_COMPRESSION = "1.2.840.10008.1.2.8.1"

#: Uncompressed transfer syntaxes, in the order an acceptor prefers them by default.
UNCOMPRESSED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)

# Storage SOP classes that pydicom 3.0's dictionary does not know yet (added to PS3.4 after its release).
_NEWER_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.9.100.1",  # General 32-bit ECG Waveform Storage (older number)
    "1.2.840.10008.5.1.4.1.1.9.100.2",
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.8",  # Height Map Segmentation Storage
)
# Not storage classes although their names say "Storage".
_NOT_STORAGE_SERVICE = ("Storage Commitment", "Media Storage Directory", "Stored Print", "Hardcopy")

_IMAGE_PREFIX = "1.2.840.10008.5.1.4.1.1."
# The storage SOP classes a C-GET requestor proposes by default (at most 127 fit beside the C-GET
# context): the usual ones, retired ones peers still send included; the same set pynetdicom proposes.
_COMMON_STORAGE = (
    "1 1.1 1.1.1 1.2 1.2.1 1.3 1.3.1 10 104.1 104.2 11 11.1 11.2 11.3 11.4 11.5 12.1 12.1.1 12.2 12.2.1 "
    "12.3 128 128.1 129 13.1.1 13.1.2 13.1.3 130 131 14.1 14.2 2 2.1 2.2 20 3 3.1 4 4.1 4.2 4.3 4.4 481.1 "
    "481.2 481.3 481.4 481.5 481.6 481.7 481.8 481.9 5 6 6.1 6.2 66 66.1 66.2 66.3 66.4 66.5 67 68.1 68.2 "
    "7 7.1 7.2 7.3 7.4 77.1 77.1.1 77.1.1.1 77.1.2 77.1.2.1 77.1.3 77.1.4 77.1.4.1 77.1.5.1 77.1.5.2 "
    "77.1.5.3 77.1.5.4 77.1.6 77.2 78.1 78.2 78.3 78.4 78.5 78.6 78.7 78.8 79.1 8 80.1 81.1 88.11 88.22 "
    "88.33 88.34 88.40 88.50 88.59 88.65 88.67 88.69 88.70 9 9.1.1 9.1.2 9.1.3 9.2.1 9.3.1 9.4.1 9.4.2 "
    "9.5.1 9.6.1"
)

#: Everything a store-as-received Storage SCP can accept: uncompressed first, then the compressed
#: syntaxes pydicom knows (JPEG family, JPEG-LS, JPEG 2000, HTJ2K, RLE, MPEG/HEVC, deflated frames).
ALL_TRANSFER_SYNTAXES: tuple[str, ...]
#: Every Storage SOP class (PS3.4 Annex B) in pydicom's UID dictionary, retired ones included.
STORAGE_SOP_CLASSES: tuple[str, ...]
#: The storage SOP classes a C-GET requestor proposes when it is not told which (127 at most).
COMMON_STORAGE_SOP_CLASSES: tuple[str, ...] = (
    ("1.2.840.10008.5.1.1.27", "1.2.840.10008.5.1.1.29", "1.2.840.10008.5.1.1.30")
    + tuple(_IMAGE_PREFIX + s for s in _COMMON_STORAGE.split())
    + ("1.2.840.10008.5.1.4.34.7",)
)


def __getattr__(name: str) -> object:
    if name == "ALL_TRANSFER_SYNTAXES":
        global ALL_TRANSFER_SYNTAXES
        ALL_TRANSFER_SYNTAXES = _all_transfer_syntaxes()
        return ALL_TRANSFER_SYNTAXES
    if name == "STORAGE_SOP_CLASSES":
        global STORAGE_SOP_CLASSES
        STORAGE_SOP_CLASSES = _storage_sop_classes()
        return STORAGE_SOP_CLASSES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _all_transfer_syntaxes() -> tuple[str, ...]:
    from pydicom.uid import AllTransferSyntaxes

    compressed = [str(ts) for ts in AllTransferSyntaxes if str(ts) not in UNCOMPRESSED_TRANSFER_SYNTAXES]
    if DEFLATED_IMAGE_FRAME_COMPRESSION not in compressed:
        compressed.append(DEFLATED_IMAGE_FRAME_COMPRESSION)
    return UNCOMPRESSED_TRANSFER_SYNTAXES + tuple(compressed)


def _storage_sop_classes() -> tuple[str, ...]:
    from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]  # pydicom's table, imported there

    found = [
        uid
        for uid, (name, kind, *_rest) in UID_dictionary.items()
        if kind == "SOP Class" and "Storage" in name and not name.startswith(_NOT_STORAGE_SERVICE)
    ]
    return tuple(found) + tuple(uid for uid in _NEWER_STORAGE if uid not in found)


__all__ = [
    "ALL_TRANSFER_SYNTAXES",
    "COMMON_STORAGE_SOP_CLASSES",
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN",
    "DEFLATED_IMAGE_FRAME_COMPRESSION",
    "EXPLICIT_VR_BIG_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "STORAGE_SOP_CLASSES",
    "UNCOMPRESSED_TRANSFER_SYNTAXES",
    "VERIFICATION_SOP_CLASS",
]
