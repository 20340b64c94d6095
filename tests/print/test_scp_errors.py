"""The print SCP's answers to protocol errors and limits (PS3.4 H.4 and PS3.7 C statuses), each on
an association that goes on working afterwards; printer failure and recovery with Printer
N-EVENT-REPORTs; annotation boxes; archiving the PDF as Encapsulated PDF."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from pacskit.client.print import PrintScu
from pacskit.dicom.printing import (
    BASIC_COLOR_IMAGE_BOX,
    BASIC_FILM_BOX,
    PRINTER,
    PrintImage,
    image_box_item,
    prepare_print_image,
)
from pacskit.net import CommandField

from ._images import ct_image
from ._server import AE, print_addin, print_server

PIXEL_DATA = 0x7FE00010
IMAGE_DISPLAY_FORMAT = 0x20100010
FILM_SIZE_ID = 0x20100050


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with print_server(tmp_path_factory.mktemp("print") / "srv", max_film_boxes=3, max_image_pixels=200 * 200,
                      film_sizes=["A4", "14INX17IN"], dpi=72) as srv:
        yield srv


def on_printer(server: Any, test: Callable[[PrintScu], Awaitable[None]], **kwargs: Any) -> None:
    async def go() -> None:
        async with PrintScu(f"{AE}@127.0.0.1:{server.port}", calling_ae="ERRSCU", **kwargs) as scu:
            await test(scu)
            # the association is still usable: a complete print works on it
            assert scu.assoc is not None and scu.assoc.is_open
            result = await scu.print_images([ct_image(32, 32)], layout="1,1", check_printer=True)
            assert result.film_boxes == 1 and not result.warnings

    asyncio.run(go())


async def _session(scu: PrintScu, **kwargs: Any) -> str:
    created = await scu.create_session(**kwargs)
    assert created.status == 0, hex(created.status)
    return created.affected_sop_instance_uid


def _attributes(result: Any) -> list[int]:
    return list(result.command.get("AttributeIdentifierList") or [])


def test_unknown_image_box(server: Any) -> None:
    async def test(scu: PrintScu) -> None:
        uid = await _session(scu)
        film = await scu.create_film_box(uid, "STANDARD\\1,1")
        answer = await scu.set_image_box("1.2.3.4.5", prepare_print_image(ct_image(16, 16)), position=1)
        assert answer.status == 0x0112
        assert (await scu.delete_film_box("1.2.3.4.6")).status == 0x0112
        assert (await scu.print_film_box("1.2.3.4.7")).status == 0x0112
        assert film.result.status == 0
        assert (await scu.delete_session(uid)).status == 0

    on_printer(server, test)


@pytest.mark.parametrize("layout", ["STANDARD\\0,2", "STANDARD\\2", "FOO\\1,1", "ROW\\x", "SLIDE", "STANDARD\\9,9"])
def test_bad_display_format(server: Any, layout: str) -> None:
    async def test(scu: PrintScu) -> None:
        uid = await _session(scu)
        film = await scu.create_film_box(uid, layout)
        assert film.result.status == 0x0106 and _attributes(film.result) == [IMAGE_DISPLAY_FORMAT]
        assert film.result.error_comment
        assert (await scu.delete_session(uid)).status == 0

    on_printer(server, test)


def test_missing_and_refused_film_box_attributes(server: Any) -> None:
    async def test(scu: PrintScu) -> None:
        uid = await _session(scu)
        ds = Dataset()
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.1.1", uid
        ds.ReferencedFilmSessionSequence = DicomSequence([ref])
        missing = await scu._meta(CommandField.N_CREATE_RQ, BASIC_FILM_BOX, ds)
        assert missing.status == 0x0120 and _attributes(missing) == [IMAGE_DISPLAY_FORMAT]
        size = await scu.create_film_box(uid, "STANDARD\\1,1", film_size="8INX10IN")
        assert size.result.status == 0x0106 and _attributes(size.result) == [FILM_SIZE_ID]
        assert "A4" in size.result.error_comment and "14INX17IN" in size.result.error_comment
        orientation = await scu.create_film_box(uid, "STANDARD\\1,1", orientation="SIDEWAYS")
        assert orientation.result.status == 0x0106
        other_session = await scu.create_film_box("1.2.3.4", "STANDARD\\1,1")
        assert other_session.result.status == 0x0106
        density = await scu.create_film_box(uid, "STANDARD\\1,1", MaxDensity=500)
        assert density.result.status == 0xB605 and density.result.dataset.MaxDensity == 320  # warning: clamped
        assert (await scu.delete_session(uid)).status == 0

    on_printer(server, test)


def test_bad_image_box_pixels(server: Any) -> None:
    async def test(scu: PrintScu) -> None:
        uid = await _session(scu)
        film = await scu.create_film_box(uid, "STANDARD\\2,1", film_size="A4")
        box = film.image_boxes[0]
        item = image_box_item(prepare_print_image(ct_image(20, 30)))
        item.PixelData = bytes(item.PixelData)[:-2]  # two bytes short of Rows x Columns
        short = await scu.set_image_box(box, item, position=1)
        assert short.status == 0x0106 and _attributes(short) == [PIXEL_DATA]
        item = image_box_item(prepare_print_image(ct_image(20, 30)))
        item.BitsAllocated = 12
        assert (await scu.set_image_box(box, item, position=1)).status == 0x0106
        item = image_box_item(prepare_print_image(ct_image(20, 30)))
        item.PhotometricInterpretation = "RGB"
        assert (await scu.set_image_box(box, item, position=1)).status == 0x0106
        item = image_box_item(prepare_print_image(ct_image(20, 30)))
        del item.Rows
        missing = await scu.set_image_box(box, item, position=1)
        assert missing.status == 0x0120 and _attributes(missing) == [0x00280010]
        wrong_place = await scu.set_image_box(box, prepare_print_image(ct_image(20, 30)), position=2)
        assert wrong_place.status == 0x0106 and _attributes(wrong_place) == [0x20200010]
        too_big = await scu.set_image_box(box, prepare_print_image(ct_image(201, 200)), position=1)
        assert too_big.status == 0xC605  # more pixels than max_image_pixels
        # a color image box on the grayscale context
        color = await scu._meta(CommandField.N_SET_RQ, BASIC_COLOR_IMAGE_BOX, Dataset(), RequestedSOPInstanceUID=box)
        assert color.status == 0x0118
        # nothing was changed by the refusals: printing it gives an empty page warning
        printed = await scu.print_film_box(film.uid)
        assert printed.status == 0xB603
        assert (await scu.delete_session(uid)).status == 0

    on_printer(server, test)


def test_image_larger_than_its_box(server: Any) -> None:
    """Magnification NONE prints one image pixel per printer pixel (72 dpi here: a 2 x 1 film of A4
    has boxes of ~280 x 820 pixels): a bigger image is refused (FAIL), cropped or decimated."""
    async def test(scu: PrintScu) -> None:
        uid = await _session(scu)
        film = await scu.create_film_box(uid, "STANDARD\\2,1", film_size="A4", magnification="NONE")
        wide = prepare_print_image(ct_image(100, 199))
        wide = PrintImage(wide.pixels.repeat(2, axis=1)[:, :398], 8)
        fail = await scu.set_image_box(film.image_boxes[0], wide, position=1, decimate_crop="FAIL")
        assert fail.status == 0xC603
        crop = await scu.set_image_box(film.image_boxes[0], wide, position=1, decimate_crop="CROP")
        assert crop.status == 0xB609
        decimate = await scu.set_image_box(film.image_boxes[1], wide, position=2, decimate_crop="DECIMATE")
        assert decimate.status == 0xB60A
        assert (await scu.print_film_box(film.uid)).status == 0
        small = prepare_print_image(ct_image(20, 20))
        too_wide = await scu.set_image_box(film.image_boxes[0], small, position=1, requested_size_mm=500.0)
        assert too_wide.status == 0xB604  # printed as wide as the box
        refused = await scu.set_image_box(film.image_boxes[0], small, position=1, requested_size_mm=500.0,
                                          decimate_crop="FAIL")
        assert refused.status == 0xC603
        assert (await scu.delete_session(uid)).status == 0

    on_printer(server, test)


def test_session_rules(server: Any) -> None:
    async def test(scu: PrintScu) -> None:
        created = await scu.create_session(MemoryAllocation=1024)
        assert created.status == 0xB600  # warning: memory allocation not supported
        uid = created.affected_sop_instance_uid
        assert (await scu.create_session()).status == 0x0213  # one film session per association
        assert (await scu.print_session(uid)).status == 0xC600  # no film boxes
        assert (await scu.create_session(copies=0)).status in (0x0106, 0x0213)
        assert (await scu.set_session(uid, NumberOfCopies=1000)).status == 0x0106
        assert (await scu.set_session(uid, MediumType="PAPYRUS")).status == 0x0106
        changed = await scu.set_session(uid, NumberOfCopies=3, PrintPriority="HIGH")
        assert changed.status == 0 and changed.dataset.NumberOfCopies == 3
        for _ in range(3):
            assert (await scu.create_film_box(uid, "STANDARD\\1,1")).result.status == 0
        assert (await scu.create_film_box(uid, "STANDARD\\1,1")).result.status == 0x0213  # max_film_boxes
        assert (await scu.print_session(uid)).status == 0xB602  # every page empty: warning, printed
        unknown_action = await scu._meta(CommandField.N_ACTION_RQ, "1.2.840.10008.5.1.1.1", None,
                                         RequestedSOPInstanceUID=uid, ActionTypeID=2)
        assert unknown_action.status == 0x0123
        printer = await scu._meta(CommandField.N_GET_RQ, PRINTER, None, RequestedSOPInstanceUID="1.2.3")
        assert printer.status == 0x0112
        assert (await scu.delete_session(uid)).status == 0
        assert (await scu.delete_session(uid)).status == 0x0112

    on_printer(server, test)


def test_memory_is_released_when_the_association_ends(server: Any) -> None:
    import threading

    from pacskit.net import events as ev

    addin = print_addin(server)
    closed = threading.Event()

    def on_closed(event: Any) -> None:  # runs after the add-in's observer (subscribed before)
        if event.assoc is not None and event.assoc.remote_ae_title == "MEMSCU":
            closed.set()

    server.bus.subscribe(ev.CONNECTION_CLOSED, on_closed)

    async def go() -> None:
        async with PrintScu(f"{AE}@127.0.0.1:{server.port}", calling_ae="MEMSCU") as scu:
            uid = await _session(scu)
            film = await scu.create_film_box(uid, "STANDARD\\1,1")
            assert (await scu.set_image_box(film.image_boxes[0], prepare_print_image(ct_image(100, 100)),
                                            position=1)).status == 0
            assert addin.budget.used >= 100 * 100
            # released without deleting the session: the association ends

    try:
        asyncio.run(go())
        assert closed.wait(30)
    finally:
        server.bus.unsubscribe(ev.CONNECTION_CLOSED, on_closed)
    assert addin.budget.used == 0


def test_printer_failure_and_recovery_are_reported(tmp_path: Path) -> None:
    with print_server(tmp_path / "srv") as server:
        addin = print_addin(server)

        async def go() -> None:
            printer_events = {1: asyncio.Event(), 3: asyncio.Event()}

            def on_report(report: Any) -> None:
                if report.sop_class_uid == PRINTER and report.event_type_id in printer_events:
                    printer_events[report.event_type_id].set()

            async with PrintScu(f"{AE}@127.0.0.1:{server.port}", calling_ae="EVTSCU", on_event_report=on_report) as scu:
                assert (await scu.printer()).status == "NORMAL"
                uid = await _session(scu)
                film = await scu.create_film_box(uid, "STANDARD\\1,1")
                assert (await scu.set_image_box(film.image_boxes[0], prepare_print_image(ct_image(32, 32)),
                                                position=1)).status == 0
                shutil.rmtree(addin.spool_dir)
                addin.spool_dir.write_text("not a folder")  # the spool cannot be written
                failed = await scu.print_film_box(film.uid)
                assert failed.status == 0xC602
                printer = await scu.printer()
                assert printer.status == "FAILURE" and printer.info == "PRINTER DOWN"
                await asyncio.wait_for(printer_events[3].wait(), 30)  # FAILURE reported
                addin.spool_dir.unlink()
                addin.spool_dir.mkdir()
                assert (await scu.print_film_box(film.uid)).status == 0
                await asyncio.wait_for(printer_events[1].wait(), 30)  # NORMAL again
                assert (await scu.printer()).status == "NORMAL"
                assert not [p for p in addin.spool_dir.iterdir() if p.suffix != ".pdf"]  # no partial file left

        asyncio.run(go())


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")
def test_annotation_boxes(tmp_path: Path) -> None:
    with print_server(tmp_path / "srv") as server:
        async def go() -> Any:
            async with PrintScu(f"{AE}@127.0.0.1:{server.port}", calling_ae="ANNSCU", annotation=True) as scu:
                return await scu.print_images([ct_image(32, 32)], layout="1,1",
                                              annotations=["Doe^John 1961", "left knee"])

        result = asyncio.run(go())
        assert not result.warnings
        (pdf,) = print_addin(server).spool_dir.glob("*.pdf")
        text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
        assert "Doe^John 1961" in text and "left knee" in text


def test_archive_as_encapsulated_pdf(tmp_path: Path) -> None:
    with print_server(tmp_path / "srv", archive=True, archive_patient_id="FILMS") as server:
        async def go() -> Any:
            async with PrintScu(f"{AE}@127.0.0.1:{server.port}", calling_ae="ARCSCU") as scu:
                return await scu.print_images([ct_image(32, 32)], layout="1,1", label="knee films")

        result = asyncio.run(go())
        addin = print_addin(server)
        (job_uid,) = result.jobs
        job = addin.jobs[job_uid]
        assert job.archived_uid
        store = addin.base.store
        assert store is not None
        with store.open_instance(job.archived_uid) as fh:
            ds = dcmread(fh)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1" and ds.PatientID == "FILMS"
        assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf" and ds.DocumentTitle == "knee films"
        pdf = Path(job.path).read_bytes()
        assert bytes(ds.EncapsulatedDocument)[: len(pdf)] == pdf and int(ds.EncapsulatedDocumentLength) == len(pdf)


def test_printer_configuration_names_what_the_printer_takes(server: Any) -> None:
    """Printer Configuration Retrieval N-GET; PrintScu adds it to a refusal (the Error Comment alone is
    cut at 64 characters)."""
    from pacskit.client.print import PrintFailed

    async def test(scu: PrintScu) -> None:
        config = await scu.configuration()
        assert config == {"FilmSizeID": ["A4", "14INX17IN"], "MediumType": ["PAPER", "CLEAR FILM", "BLUE FILM"],
                          "MagnificationType": ["BILINEAR", "REPLICATE", "CUBIC", "NONE"]}
        with pytest.raises(PrintFailed) as caught:
            await scu.print_images([ct_image(32, 32)], layout="1,1", film_size="24CMX30CM", check_printer=False)
        assert "FilmSizeID: A4, 14INX17IN" in str(caught.value) and "24CMX30CM" in str(caught.value)

    on_printer(server, test)
