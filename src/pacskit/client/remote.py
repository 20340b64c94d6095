"""Which peer a client talks to: ``RemoteAE`` entries from the AE registry, or ``AET@host:port``.

Every SCU and the command line resolve their target through :func:`resolve_remote`, so a name works
the same everywhere: ``"ORTHANC"`` is looked up in the registry (``ae-titles.toml``, the one
``pacskit ae add`` writes), ``"ORTHANC@127.0.0.1:4242"`` needs no registry at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

from pacskit.config.aetitles import RemoteAE

if TYPE_CHECKING:
    from pacskit.config.aetitles import AeTitles

__all__ = ["RemoteAE", "RemoteSpec", "UnknownRemote", "parse_address", "resolve_remote"]

#: What SCUs accept as a target: a registry entry, ``"AET@host:port"``, or a registered AE title.
RemoteSpec = Union[RemoteAE, str]


class UnknownRemote(LookupError):
    """The target is neither ``AET@host:port`` nor a title in the AE registry (or no registry was given)."""


def parse_address(text: str) -> tuple[str, str, int]:
    """Parse dcm4che's ``AET@host:port`` form into ``(ae, host, port)``.

    ``host`` may be a bracketed IPv6 address (``AE@[::1]:104``). Raises ``ValueError`` saying which
    part is wrong.
    """
    ae, sep, rest = text.partition("@")
    host, colon, port_text = rest.rpartition(":")
    if not sep or not colon or not ae or not host:
        raise ValueError(f"{text!r} is not AET@host:port")
    if len(ae) > 16:
        raise ValueError(f"AE title {ae!r} is longer than 16 characters")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return ae, host.strip("[]"), port


def resolve_remote(target: RemoteSpec, registry: AeTitles | None = None) -> RemoteAE:
    """Turn ``target`` into a :class:`RemoteAE`.

    ``AET@host:port`` is parsed (ValueError if malformed); a bare title is looked up in ``registry``
    (:class:`UnknownRemote` if absent). A :class:`RemoteAE` is returned unchanged.
    """
    if isinstance(target, RemoteAE):
        return target
    if "@" in target:
        ae, host, port = parse_address(target)
        return RemoteAE(title=ae, host=host, port=port)
    if registry is None:
        raise UnknownRemote(f"{target!r} is not AET@host:port and no AE registry was given to look it up")
    found = registry.get(target)
    if found is None:
        raise UnknownRemote(f"AE {target!r} is not registered (pacskit ae add {target} --host H --port P)")
    return found
