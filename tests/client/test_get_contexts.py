"""What a C-GET proposes (issue 15 item 6): compressed syntaxes in contexts of their own, within 127."""

from __future__ import annotations

from pacskit.client.query import (
    GET_COMPRESSED,
    GET_COMPRESSED_CLASSES,
    GET_UNCOMPRESSED,
    get_contexts,
)
from pacskit.net.presentation import build_requested

MR = "1.2.840.10008.5.1.4.1.1.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


def _syntaxes(contexts, uid: str) -> list[tuple[str, ...]]:
    return [tuple(c.transfer_syntaxes) for c in contexts if c.abstract_syntax == uid]


def test_default_offers_each_compressed_syntax_alone_for_the_image_classes() -> None:
    contexts = get_contexts()
    assert len(contexts) <= 127
    build_requested(contexts)  # a valid proposal: at most 128 with the C-GET's own context
    assert all(c.scp_role and not c.scu_role for c in contexts)
    for uid in GET_COMPRESSED_CLASSES:
        offered = _syntaxes(contexts, uid)
        assert tuple(GET_UNCOMPRESSED) in offered and (JPEG2000_LOSSLESS,) in offered
    assert _syntaxes(contexts, BASIC_TEXT_SR) == [tuple(GET_UNCOMPRESSED)]  # SR is among the likely classes


def test_named_classes_get_every_compressed_syntax() -> None:
    offered = _syntaxes(get_contexts([MR]), MR)
    assert offered == [tuple(GET_UNCOMPRESSED)] + [(ts,) for ts in GET_COMPRESSED]


def test_uncompressed_only_and_explicit_syntaxes() -> None:
    strict = get_contexts([MR, BASIC_TEXT_SR], require_uncompressed=True)
    assert [(c.abstract_syntax, tuple(c.transfer_syntaxes)) for c in strict] == [
        (MR, tuple(GET_UNCOMPRESSED)), (BASIC_TEXT_SR, tuple(GET_UNCOMPRESSED))]
    exact = get_contexts([MR], transfer_syntaxes=(JPEG2000_LOSSLESS,))
    assert [tuple(c.transfer_syntaxes) for c in exact] == [(JPEG2000_LOSSLESS,)]
    assert len(get_contexts(require_uncompressed=True)) <= 127
