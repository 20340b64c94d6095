"""Fixtures for the client tests: synthetic studies and the real peers they are loaded into."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacskit.testing import free_port, make_series, storescp

from ._peers import dcmqrscp, tool

#: Our AE title and the port our temporary Storage SCP uses for move-to-us (known to dcmqrscp).
ME = "PKCLIENT"


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Two patients: DOE^JOHN (CT, 2 series of 3 and 2) and ROE^JANE (MR, 1 series of 2)."""
    root = tmp_path_factory.mktemp("studies")
    ct = make_series(root / "ct1", 3, patient_id="PK1", patient_name="DOE^JOHN", series_number=1, attrs={"StudyID": "S1"})
    import pydicom

    study = str(pydicom.dcmread(ct[0]).StudyInstanceUID)
    ct2 = make_series(root / "ct2", 2, patient_id="PK1", patient_name="DOE^JOHN", study_uid=study, series_number=2)
    mr = make_series(root / "mr", 2, patient_id="PK2", patient_name="ROE^JANE", modality="MR")
    return {"ct": ct + ct2, "mr": mr}


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory):
    """A DCMTK storescp that dcmqrscp knows as move destination STORESCP."""
    tool("storescp")
    with storescp(tmp_path_factory.mktemp("storescp-out")) as peer:
        yield peer


@pytest.fixture(scope="module")
def my_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def qrscp(tmp_path_factory: pytest.TempPathFactory, studies, receiver, my_port):
    """DCMTK dcmqrscp holding ``studies``; move destinations: us (ME@my_port) and STORESCP."""
    work = tmp_path_factory.mktemp("dcmqrscp")
    hosts = [(ME, "127.0.0.1", my_port), (receiver.ae_title, "127.0.0.1", receiver.port)]
    with dcmqrscp(work, hosts=hosts, load=studies["ct"] + studies["mr"]) as peer:
        yield peer


def address(peer) -> str:
    return f"{peer.ae_title}@127.0.0.1:{peer.port}"
