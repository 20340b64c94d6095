"""Engine configuration: timeouts, limits and identity, passed explicitly (no module globals)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from pacskit.net.proxy import TrustedProxies

#: pacskit's Implementation Class UID (a 2.25 UUID-derived UID, PS3.5 B.2), fixed for the project.
IMPLEMENTATION_CLASS_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "https://pacskit.org/implementation").int)
IMPLEMENTATION_VERSION_NAME = "PACSKIT_010"


@dataclass(frozen=True, slots=True)
class NetConfig:
    """Limits and timeouts of one acceptor or requestor. Seconds; ``None`` disables a timeout.

    - ``max_pdu_length``: the largest P-DATA-TF we accept, advertised to peers (0 = unlimited). Large
      values mean fewer PDUs per dataset, which is what makes bulk transfer fast.
    - ``artim_timeout``: PS3.8 ARTIM — how long an open connection may wait for A-ASSOCIATE-RQ, and how
      long we wait for the peer to close after release/abort (slow-loris defence).
    - ``acse_timeout``: how long a requestor waits for A-ASSOCIATE-AC/RJ and A-RELEASE-RP.
    - ``dimse_timeout``: how long a requestor waits for each DIMSE response, and an acceptor for the rest
      of a message once its first fragment arrived.
    - ``network_timeout``: an established association with no incoming traffic for this long is aborted.
    - ``handler_threads``: threads for plain-function handlers, so a slow handler never blocks the loop.
    - ``spare_temp_files``: empty temp files kept ready in ``temp_dir`` by a helper thread, so
      receiving a dataset never waits on file creation on the event loop (which a journalling file
      system delays while another thread's fsync commits). 0: created on demand. The server uses 16
      (refilled in batches of half).
    - ``proxy_protocol_from``: the load balancers whose connections start with a PROXY protocol header
      naming the client (:mod:`pacskit.net.proxy`); empty (the default): nobody's is read.
    - ``inline_handlers``: run a handler that allows it (:class:`~pacskit.net.services.InlineHandler`:
      the Storage add-in's C-STORE) on the event loop's thread when its association is the only
      connection of the loop, instead of handing it to the thread pool and back. ``False``: always
      in the pool.
    """

    max_pdu_length: int = 262_144
    max_associations: int = 100
    artim_timeout: float = 30.0
    acse_timeout: float = 30.0
    dimse_timeout: float | None = 60.0
    network_timeout: float | None = 600.0
    handler_threads: int = 8
    temp_dir: str | None = None
    max_dataset_size: int = 0
    max_memory_dataset: int = 64 * 1024 * 1024
    max_command_length: int = 64 * 1024
    max_associate_pdu_length: int = 1024 * 1024
    max_presentation_contexts: int = 128
    transfer_syntax_preference: Sequence[str] | None = None
    unlimited_pdu_send_size: int = 1024 * 1024
    fsync_received: bool = False
    spare_temp_files: int = 0
    inline_handlers: bool = True
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME
    proxy_protocol_from: TrustedProxies = TrustedProxies()

    def __post_init__(self) -> None:
        if self.max_pdu_length and self.max_pdu_length < 1024:
            raise ValueError("max_pdu_length must be 0 (unlimited) or at least 1024")
        if self.max_associations < 1:
            raise ValueError("max_associations must be at least 1")
        if self.handler_threads < 1:
            raise ValueError("handler_threads must be at least 1")
