"""``pacskit print``: send images to a DICOM printer (Basic Grayscale / Color Print Management).

``pacskit print PRINTER@host:port SOURCE... --layout 2,2 --film 14INX17IN --copies 2``

SOURCE is a file, a folder (its DICOM files, recursively), or a Study / Series Instance UID of the
local server folder's store (``--data-dir`` / ``--config``). Images are printed in order (series
number, instance number for a UID; name for files), their first frame each (``--all-frames``: every
frame), with their VOI window (or
``--window C,W``), on as many films of the layout as they need. A refusal is one line naming the
step, the status, the attribute and the values asked for; exit codes as in :mod:`pacskit.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from pacskit.cli.client import TargetArg
from pacskit.cli.common import (
    EXIT_FAILURE_STATUS,
    EXIT_OK,
    EXIT_USAGE,
    NetOptions,
    app,
    fail,
    network_options,
    resolve_target,
    run,
    scu_options,
    server_settings,
    setup_logging,
)


def _files(sources: list[str], data_dir: str | None, config: str | None) -> list[Path]:
    """The files to print, in order; a source that is no path is a Study or Series UID of the store."""
    files: list[Path] = []
    uids: list[str] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            files.append(path)
        elif all(part.isdigit() for part in source.split(".")) and "." in source:
            uids.append(source)
        else:
            raise fail(f"{source}: no such file or folder, and not a study or series UID", EXIT_USAGE)
    if uids:
        files.extend(_stored_files(uids, data_dir, config))
    return files


def _stored_files(uids: list[str], data_dir: str | None, config: str | None) -> list[Path]:
    from sqlalchemy import select

    from pacskit.server.server import open_store
    from pacskit.store.index.models import Instance, Series, Study

    store = open_store(server_settings(config, data_dir), recover=False)
    try:
        out: list[Path] = []
        with store.index.reading() as s:
            for uid in uids:
                query = (select(Instance.sop_instance_uid).join(Series, Instance.series_fk == Series.pk)
                         .join(Study, Series.study_fk == Study.pk)
                         .where((Study.study_instance_uid == uid) | (Series.series_instance_uid == uid))
                         .order_by(Series.series_number, Series.pk, Instance.instance_number, Instance.pk))
                found = list(s.scalars(query))
                if not found:
                    raise fail(f"{uid}: no study or series of that UID in {store_name(data_dir, config)}", EXIT_USAGE)
                for sop_uid in found:
                    path = store.instance_path(sop_uid)
                    if path is None:
                        raise fail(f"instance {sop_uid} of {uid} has no readable file", EXIT_USAGE)
                    out.append(Path(path))
        return out
    finally:
        store.close()


def store_name(data_dir: str | None, config: str | None) -> str:
    return config or data_dir or "./pacs-data"


def _window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError:
        raise fail(f"--window {text!r}: expected CENTER,WIDTH", EXIT_USAGE) from None
    if width < 1:
        raise fail("--window: the width must be at least 1", EXIT_USAGE)
    return center, width


@app.command("print")
@network_options(timeout=60.0)
def print_(
    target: TargetArg,
    sources: Annotated[list[str], typer.Argument(help="files, folders, or study / series UIDs of the local store")],
    layout: Annotated[str, typer.Option("--layout", "-l", help="C,R (STANDARD\\C,R), or ROW\\n1,n2… / COL\\n1,n2…")] = "1,1",
    film: Annotated[Optional[str], typer.Option("--film", help="Film Size ID, e.g. 14INX17IN, A4 [printer's default]")] = None,
    orientation: Annotated[Optional[str], typer.Option("--orientation", help="PORTRAIT or LANDSCAPE")] = None,
    copies: Annotated[Optional[int], typer.Option("--copies", min=1, help="Number of Copies")] = None,
    priority: Annotated[Optional[str], typer.Option("--priority", help="HIGH, MED or LOW")] = None,
    medium: Annotated[Optional[str], typer.Option("--medium", help="PAPER, CLEAR FILM, BLUE FILM…")] = None,
    destination: Annotated[Optional[str], typer.Option("--destination", help="MAGAZINE, PROCESSOR, BIN_i")] = None,
    label: Annotated[Optional[str], typer.Option("--label", help="Film Session Label")] = None,
    magnification: Annotated[Optional[str], typer.Option("--magnification", help="REPLICATE, BILINEAR, CUBIC or NONE")] = None,
    border: Annotated[Optional[str], typer.Option("--border", help="Border Density: BLACK, WHITE or hundredths of OD")] = None,
    color: Annotated[bool, typer.Option("--color", help="Basic Color Print Management (RGB)")] = False,
    bits: Annotated[int, typer.Option("--bits", help="8 or 12 bits per grayscale pixel")] = 8,
    window: Annotated[Optional[str], typer.Option("--window", help="VOI window CENTER,WIDTH [the image's first]")] = None,
    annotation: Annotated[Optional[list[str]], typer.Option("--annotation", "-a", help="annotation box text (repeat)")] = None,
    lut: Annotated[Optional[str], typer.Option("--lut", help="Presentation LUT shape: IDENTITY or 'LIN OD'")] = None,
    all_frames: Annotated[bool, typer.Option("--all-frames", help="every frame of multi-frame images [the first]")] = False,
    *,
    net: NetOptions,
) -> None:
    """Print images on a DICOM printer (film session, film boxes of LAYOUT, one N-ACTION per film)."""
    setup_logging(net.verbose)
    try:
        from pacskit.client.print import PrintFailed, PrintScu, display_format
    except ImportError as exc:  # numpy and friends: the [print] extra
        raise fail(f"printing needs the print extra (pip install 'pacskit[print]'): {exc}", EXIT_USAGE) from None
    if lut is not None and lut.upper() not in ("IDENTITY", "LIN OD"):
        raise fail("--lut must be IDENTITY or 'LIN OD'", EXIT_USAGE)
    lut = lut.upper() if lut is not None else None
    if bits not in (8, 12):
        raise fail("--bits must be 8 or 12", EXIT_USAGE)
    try:
        layout_text = display_format(layout)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    voi = _window(window)
    remote = resolve_target(target, net)
    files = _files(sources, net.data_dir, net.config)
    if not files:
        raise fail("nothing to print", EXIT_USAGE)
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    datasets: list[Any] = []
    for path in files:
        try:
            ds = dcmread(path)
        except (InvalidDicomError, OSError) as exc:
            raise fail(f"{path}: not a DICOM file ({exc})", EXIT_USAGE) from None
        if "PixelData" not in ds:
            typer.echo(f"skipped {path}: no pixel data", err=True)
            continue
        datasets.append(ds)
    if not datasets:
        raise fail("none of the files is an image", EXIT_USAGE)
    options = scu_options(remote, net)

    async def go() -> Any:
        async with PrintScu(remote, color=color, annotation=bool(annotation), presentation_lut=lut is not None,
                            **options) as scu:
            return await scu.print_images(
                datasets, layout=layout_text, film_size=film, orientation=orientation, copies=copies,
                priority=priority, medium=medium, destination=destination, label=label,
                magnification=magnification, border_density=border, bits=bits, window=voi,
                annotations=annotation or (), all_frames=all_frames, lut_shape=lut)

    try:
        result = run(go())
    except PrintFailed as exc:
        raise fail(str(exc), EXIT_FAILURE_STATUS) from None
    except ValueError as exc:  # an image that cannot be prepared (pixel data, frame)
        raise fail(str(exc), EXIT_USAGE) from None
    for step, status, comment in result.warnings:
        typer.echo(f"warning: {step}: 0x{status:04X}{': ' + comment if comment else ''}", err=True)
    jobs = f", print jobs {', '.join(result.jobs)}" if result.jobs else ""
    typer.echo(f"printed {result.images} image(s) on {result.film_boxes} film(s) of {layout_text}{jobs}")
    raise typer.Exit(EXIT_OK)
