"""pacskit.media: DICOM interchange media (PS3.10, PS3.11, PS3.12; IHE PDI).

- :mod:`~pacskit.media.profiles`: the application profiles (``STD-GEN-CD``...) and media capacities;
- :mod:`~pacskit.media.fileset`: source files -> volumes, each a File-set with a DICOMDIR written by
  pydicom's ``FileSet``, files re-encoded where the profile requires it;
- :mod:`~pacskit.media.output`: a volume as an ISO 9660 image (Joliet, Rock Ridge; pycdlib), a ZIP
  file or a folder, each written under a temporary name and renamed when complete;
- :mod:`~pacskit.media.build`: both together from the archive (``pacskit media build``);
- :mod:`~pacskit.media.burners`: output devices (a folder, an optical drive through xorriso /
  growisofs, third-party robots) behind one small interface.

See docs/media.md.
"""

from __future__ import annotations

from pacskit.media.build import MediaCancelled, MediaOptions, MediaResult, build_media, select_sources
from pacskit.media.fileset import DoesNotFit, MediaError, MediaFile, SourceFile, UnusableInstance, Volume, plan_volumes
from pacskit.media.output import FORMATS, volume_paths, write_folder, write_iso, write_volume, write_zip
from pacskit.media.profiles import DEFAULT_PROFILE, PROFILES, Profile, UnknownProfile, get_profile

__all__ = [
    "DEFAULT_PROFILE",
    "FORMATS",
    "PROFILES",
    "DoesNotFit",
    "MediaCancelled",
    "MediaError",
    "MediaFile",
    "MediaOptions",
    "MediaResult",
    "Profile",
    "SourceFile",
    "UnknownProfile",
    "UnusableInstance",
    "Volume",
    "build_media",
    "get_profile",
    "plan_volumes",
    "select_sources",
    "volume_paths",
    "write_folder",
    "write_iso",
    "write_volume",
    "write_zip",
]
