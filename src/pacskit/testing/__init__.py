"""Test and benchmark helpers shipped with pacskit.

* :mod:`pacskit.testing.synth` – synthetic, valid DICOM Part 10 files.
* :mod:`pacskit.testing.peers` – run DCMTK, Orthanc and pynetdicom peers on 127.0.0.1.
* :mod:`pacskit.testing.pynd_scp` – the minimal pynetdicom Storage SCP used as a baseline.
* :mod:`pacskit.testing.server` – a pacskit server in a background thread, for tests driving it.
* :mod:`pacskit.testing.viewer` – the web viewer's test data (CT phantom, compressed copies) and
  expected grey levels (pydicom), and the built front-end served under ``/ui/``.
"""

from pacskit.testing.peers import (
    OrthancPeer,
    Peer,
    PeerError,
    count_store_successes,
    dcmtk_env,
    dcmtk_tool,
    free_port,
    have_dcmtk,
    have_orthanc,
    orthanc,
    pynetdicom_store_scp,
    run_echoscu,
    run_storescu,
    storescp,
    wait_for_port,
)
from pacskit.testing.synth import (
    dataset_bytes,
    make_dataset,
    make_instance,
    make_large_instance,
    make_series,
    pixel_bytes,
)

__all__ = [
    "OrthancPeer",
    "Peer",
    "PeerError",
    "count_store_successes",
    "dataset_bytes",
    "dcmtk_env",
    "dcmtk_tool",
    "free_port",
    "have_dcmtk",
    "have_orthanc",
    "make_dataset",
    "make_instance",
    "make_large_instance",
    "make_series",
    "orthanc",
    "pixel_bytes",
    "pynetdicom_store_scp",
    "run_echoscu",
    "run_storescu",
    "storescp",
    "wait_for_port",
]
