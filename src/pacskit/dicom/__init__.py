"""pacskit.dicom: DICOM *data*, below the network engine and the store; imports nothing of pacskit.

- :mod:`~pacskit.dicom.uids`: transfer syntax, Verification and storage SOP class UIDs
- :mod:`~pacskit.dicom.vr`: value representation tables for hand-written encoders and walkers
- :mod:`~pacskit.dicom.part10`: Part 10 files: File Meta read and written by hand, whole or in
  blocks; the deflate stream of Deflated Explicit VR Little Endian
- :mod:`~pacskit.dicom.codec`: a pydicom dataset to bytes in a transfer syntax, and back
- :mod:`~pacskit.dicom.walker`: the raw element walker (nesting guard, ingest's one pass)
- :mod:`~pacskit.dicom.transcode`: re-encoding a Part 10 file in another transfer syntax

Import from the modules; this package itself imports nothing, so ``import pacskit.dicom.uids`` in the
engine does not pull in pydicom.
"""
