"""``pacskit media``: interchange media (CD, DVD, USB) from the archive, directly or through a Media
Creation Management SCP.

- ``pacskit media build STUDY… --out disc.iso`` builds from the local archive (``--data-dir``) at once:
  an ISO image (``.iso``), a ZIP file (``.zip``) or a folder (anything else, or ``--format``). Several
  volumes when one is not enough: ``disc_1of2.iso``, ``disc_2of2.iso``. Reads the archive only, so it
  may run while the server runs.
- ``pacskit media create AET@host:port STUDY…`` asks an SCP (this server's ``media`` add-in, another
  burning station) for media of the studies: it finds their instances with C-FIND (IMAGE level, on the
  same SCP), N-CREATEs the request, initiates it, and with ``--wait`` follows it until DONE / FAILURE.
- ``pacskit media status AET@host:port UID`` / ``pacskit media cancel AET@host:port UID``.

Exit codes (see :mod:`pacskit.cli`): 0 done; 1 the SCP refused or the request FAILED (the reason is
printed), or the media could not be built; 2 usage (unknown study, unknown profile); 3-6 network.
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
    ConfigOpt,
    DataDirOpt,
    NetOptions,
    VerboseOpt,
    app,
    fail,
    network_options,
    resolve_target,
    run,
    scu_options,
    server_settings,
    setup_logging,
)

media_app = typer.Typer(help="DICOM media (CD, DVD, USB): build from the archive, or ask a Media Creation "
                        "Management SCP.", no_args_is_help=True)
app.add_typer(media_app, name="media")

ProfileOpt = Annotated[str, typer.Option("--profile", help="PS3.11 application profile (STD-GEN-CD, STD-GEN-DVD-J2K...)")]
LabelOpt = Annotated[str, typer.Option("--label", help="label text: the ISO volume name and README.TXT")]


def _format_of(out: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    return {".iso": "iso", ".zip": "zip"}.get(out.suffix.lower(), "folder")


@media_app.command("build")
def build(
    studies: Annotated[list[str], typer.Argument(help="Study Instance UIDs")],
    out: Annotated[Path, typer.Option("--out", "-o", help="disc.iso, usb.zip or a folder")],
    fmt: Annotated[Optional[str], typer.Option("--format", help="iso, zip or folder [from --out]")] = None,
    profile: ProfileOpt = "STD-GEN-CD",
    label: LabelOpt = "",
    series: Annotated[Optional[list[str]], typer.Option("--series", help="also this series (repeatable)")] = None,
    instances: Annotated[Optional[list[str]], typer.Option("--instance", help="also this instance (repeatable)")] = None,
    lossless: Annotated[bool, typer.Option("--lossless", help="JPEG 2000 lossless where the profile allows it")] = False,
    split: Annotated[bool, typer.Option("--split/--no-split", help="several volumes when one is not enough")] = True,
    viewer: Annotated[bool, typer.Option("--viewer", help="put the web viewer on the media (index.html)")] = False,
    disc_label: Annotated[bool, typer.Option("--disc-label", help="also write a printable label per volume "
                                             "(<name>_label.pdf): --label, the patients and studies, the barcode")] = False,
    barcode: Annotated[str, typer.Option("--barcode", help="barcode value on the label (implies --disc-label)")] = "",
    symbology: Annotated[str, typer.Option("--barcode-symbology", help="CODE128 (default), CODE39, QRCODE...")] = "",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Build media of STUDY… from the local archive (ISO 9660 with Joliet and Rock Ridge, ZIP, or a folder)."""
    from pacskit.media import MediaError, MediaOptions, UnknownProfile, build_media, get_profile, select_sources
    from pacskit.server.server import open_store

    setup_logging(verbose)
    fmt = _format_of(out, fmt)
    if fmt not in ("iso", "zip", "folder"):
        raise fail(f"--format must be iso, zip or folder, not {fmt!r}", EXIT_USAGE)
    try:
        get_profile(profile)
    except UnknownProfile as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if barcode or symbology:
        from pacskit.media.label import barcode_problem

        problem = barcode_problem(barcode, symbology)
        if problem:
            raise fail(problem, EXIT_USAGE)
    settings = server_settings(config, data_dir)
    store = open_store(settings, recover=False)  # read only: the server may be running
    try:
        sources, missing = select_sources(store, studies=studies, series=series or [], instances=instances or [])
        if missing:
            raise fail(f"not in the archive: {', '.join(missing)}", EXIT_USAGE)
        try:
            result = build_media(sources, out, MediaOptions(profile=profile, fmt=fmt, label=label, lossless=lossless,
                                                            allow_split=split, include_viewer=viewer))
        except MediaError as exc:
            raise fail(str(exc), EXIT_FAILURE_STATUS) from None
    finally:
        store.close()
    labels = []
    if disc_label or barcode:
        from pacskit.media.label import LabelRequest, label_name, studies_of, write_label

        wanted = LabelRequest(label, True, barcode, symbology)
        studies = studies_of(s.path for s in {s.study_uid or s.path: s for s in sources}.values())
        labels = [write_label(p.with_name(label_name(p)), wanted, studies, n, len(result.paths))
                  for n, p in enumerate(result.paths, 1)]
    for path in result.paths + labels:
        typer.echo(str(path))
    typer.echo(f"{result.instances} instances ({result.transcoded} re-encoded for {profile}), "
               f"{len(result.paths)} volume{'s' if len(result.paths) != 1 else ''}, {result.bytes} bytes")
    raise typer.Exit(EXIT_OK)


async def _references(remote: Any, options: dict[str, Any], studies: list[str]) -> list[tuple[str, str]]:
    from pacskit.client import QueryRetrieveScu

    refs: list[tuple[str, str]] = []
    scu = QueryRetrieveScu(remote, model="study", **options)
    for study in studies:  # hierarchical: the series of the study, then the instances of each
        series = await scu.find({"StudyInstanceUID": study, "SeriesInstanceUID": ""}, level="SERIES")
        if not series.records:
            raise fail(f"study {study} not found on {remote.title}", EXIT_USAGE)
        for s in series.records:
            found = await scu.find({"StudyInstanceUID": study, "SeriesInstanceUID": s.series_instance_uid,  # type: ignore[attr-defined]
                                    "SOPInstanceUID": "", "SOPClassUID": ""}, level="IMAGE")
            refs += [(r.sop_class_uid, r.sop_instance_uid) for r in found.records]  # type: ignore[attr-defined]
    return refs


def _print_status(status: Any) -> None:
    typer.echo(f"{status.uid}: {status.state} ({status.info}), {status.media_count} piece(s) of media")
    for fid, fuid in status.media:
        typer.echo(f"  media {fid} {fuid}".rstrip())
    for cls, inst, reason in status.failed:
        typer.echo(f"  failed {inst} ({cls}): 0x{reason:04X}")


@media_app.command("create")
@network_options(timeout=30.0)
def create(
    target: TargetArg,
    studies: Annotated[list[str], typer.Argument(help="Study Instance UIDs the SCP holds")],
    profile: ProfileOpt = "STD-GEN-CD",
    label: LabelOpt = "",
    copies: Annotated[int, typer.Option("--copies", min=1, help="number of copies")] = 1,
    priority: Annotated[str, typer.Option("--priority", help="HIGH, MED or LOW")] = "MED",
    split: Annotated[bool, typer.Option("--split/--no-split", help="allow media splitting")] = True,
    viewer: Annotated[bool, typer.Option("--viewer", help="ask for the display application on the media")] = False,
    initiate: Annotated[bool, typer.Option("--initiate/--no-initiate", help="start it at once")] = True,
    wait: Annotated[bool, typer.Option("--wait", help="N-GET until DONE or FAILURE")] = False,
    wait_timeout: Annotated[float, typer.Option(help="seconds --wait waits")] = 3600.0,
    *,
    net: NetOptions,
) -> None:
    """Ask a Media Creation Management SCP for media of STUDY… (prints the request UID)."""
    from pacskit.client.media import MediaCreationScu

    setup_logging(net.verbose)
    priority = priority.upper()
    if priority not in ("HIGH", "MED", "LOW"):
        raise fail("--priority must be HIGH, MED or LOW", EXIT_USAGE)
    remote = resolve_target(target, net)
    options = scu_options(remote, net)

    async def go() -> int:
        refs = await _references(remote, options, studies)
        async with MediaCreationScu(remote, **options) as scu:
            uid, created = await scu.create(refs, profile=profile, label=label, allow_split=split,
                                            include_display_application="YES" if viewer else "NO")
            if not created.ok:
                raise fail(f"N-CREATE refused with status 0x{created.status:04X}: {created.error_comment}",
                           EXIT_FAILURE_STATUS)
            typer.echo(uid)
            if created.status != 0:
                typer.echo(f"warning 0x{created.status:04X}: {created.error_comment}", err=True)
            if not initiate:
                return EXIT_OK
            started = await scu.initiate(uid, copies=copies, priority=priority)
            if not started.ok:
                raise fail(f"N-ACTION refused with status 0x{started.status:04X}: {started.error_comment}",
                           EXIT_FAILURE_STATUS)
            if not wait:
                return EXIT_OK
            status = await scu.wait(uid, timeout=wait_timeout)
            _print_status(status)
            return EXIT_OK if status.state == "DONE" else EXIT_FAILURE_STATUS

    raise typer.Exit(run(go()))


@media_app.command("status")
@network_options(timeout=30.0)
def status(
    target: TargetArg,
    uid: Annotated[str, typer.Argument(help="the request's SOP Instance UID")],
    *,
    net: NetOptions,
) -> None:
    """N-GET of a media creation request: its state, the media made, the instances that failed."""
    from pacskit.client.media import MediaCreationScu, MediaStatusError

    setup_logging(net.verbose)
    remote = resolve_target(target, net)

    async def go() -> int:
        async with MediaCreationScu(remote, **scu_options(remote, net)) as scu:
            try:
                current = await scu.status(uid)
            except MediaStatusError as exc:
                raise fail(str(exc), EXIT_FAILURE_STATUS) from None
        _print_status(current)
        return EXIT_FAILURE_STATUS if current.state == "FAILURE" else EXIT_OK

    raise typer.Exit(run(go()))


@media_app.command("cancel")
@network_options(timeout=60.0)
def cancel(
    target: TargetArg,
    uid: Annotated[str, typer.Argument(help="the request's SOP Instance UID")],
    *,
    net: NetOptions,
) -> None:
    """Cancel (and delete) a media creation request that is not completed yet."""
    from pacskit.client.media import MediaCreationScu

    setup_logging(net.verbose)
    remote = resolve_target(target, net)

    async def go() -> int:
        async with MediaCreationScu(remote, **scu_options(remote, net)) as scu:
            result = await scu.cancel(uid)
        if not result.ok:
            raise fail(f"cancel refused with status 0x{result.status:04X}: {result.error_comment}", EXIT_FAILURE_STATUS)
        typer.echo(f"{uid}: cancelled")
        return EXIT_OK

    raise typer.Exit(run(go()))
