"""Value representation facts the raw encoders and walkers need (PS3.5 6.2, 7.1.2).

One table for everything in pacskit that reads or writes element headers by hand (the Part 10 File
Meta reader and writer, the raw element walker, the C-FIND answer encoder), as bytes (what a header
holds) and as text (what pydicom reports).
"""

from __future__ import annotations

#: VRs whose Explicit VR header has two reserved bytes and a 32-bit length (PS3.5 Table 7.1-1).
LONG_VR_NAMES: frozenset[str] = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
#: :data:`LONG_VR_NAMES` as the two bytes of an element header.
LONG_VRS: frozenset[bytes] = frozenset(vr.encode("ascii") for vr in LONG_VR_NAMES)

#: Every VR of PS3.5 Table 6.2-1, as the two bytes of an Explicit VR header.
KNOWN_VRS: frozenset[bytes] = frozenset(
    v.encode("ascii") for v in "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    "UR US UT UV".split()
)

#: Text VRs whose values are decoded with the Specific Character Set (PS3.5 6.1.2.3).
CHARSET_VRS: frozenset[str] = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: VRs whose values are text (padded with a space, or NUL for UI).
TEXT_VRS: frozenset[str] = CHARSET_VRS | {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"}

#: Width of one word of the binary VRs whose byte order follows the transfer syntax.
WORD_SIZE: dict[str, int] = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}

__all__ = ["CHARSET_VRS", "KNOWN_VRS", "LONG_VRS", "LONG_VR_NAMES", "TEXT_VRS", "WORD_SIZE"]
