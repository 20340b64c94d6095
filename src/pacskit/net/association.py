"""Associations: one :class:`Association` per connection, in either role.

It is the DICOM "service user" of its :class:`~pacskit.net.dul.UpperLayer`, made of four parts, one
module each:

- :mod:`~pacskit.net.negotiation`: ACSE: A-ASSOCIATE (both roles), release, abort;
- :mod:`~pacskit.net.assembly`: DIMSE messages from PDV fragments (datasets streamed into sinks) and
  into them;
- :mod:`~pacskit.net.dispatch`: the request worker: handlers run, their results sent as responses,
  while C-CANCEL and responses keep flowing;
- :mod:`~pacskit.net.requestor`: ``echo`` / ``store`` / ``find`` / ``move`` / ``get`` / N-service
  calls for the local application, and :func:`~pacskit.net.requestor.connect`.

They share the state of :class:`~pacskit.net.base.AssociationBase`.

Life of one association (acceptor side): ``connection_made`` → ARTIM → A-ASSOCIATE-RQ → checks
(protocol version, application context, called AE, association limit, the ``on_associate`` hook) →
context negotiation → A-ASSOCIATE-AC → P-DATA: command PDVs collected, dataset PDVs streamed into a sink
→ complete message queued → request worker runs the handler → response(s) sent → A-RELEASE-RQ queued
behind running requests → A-RELEASE-RP → peer closes (or ARTIM closes) → cleanup.
"""

from __future__ import annotations

from pacskit.net.assembly import Assembly
from pacskit.net.dispatch import Dispatch
from pacskit.net.negotiation import Negotiation
from pacskit.net.requestor import Requestor


class Association(Negotiation, Assembly, Dispatch, Requestor):
    """One DICOM association, acceptor or requestor side. Create requestors with
    :func:`~pacskit.net.requestor.connect`."""

    __slots__ = ()


__all__ = ["Association"]
