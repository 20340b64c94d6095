"""Pure parts of the Retrieve add-in: context proposals and count elements."""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

from pacskit.addins.retrieve import RetrieveAddIn, RetrieveOptions, _Tally, propose_contexts
from pacskit.dicom.transcode import encodable_syntaxes

CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"


def test_contexts_exact_then_fallback() -> None:
    got = propose_contexts([(CT, ExplicitVRLittleEndian), (SC, JPEGBaseline8Bit), (SC, RLELossless)])
    pairs = [(c.abstract_syntax, tuple(c.transfer_syntaxes)) for c in got]
    assert pairs == [
        (CT, (ExplicitVRLittleEndian,)),
        (SC, (JPEGBaseline8Bit,)),
        (SC, (RLELossless,)),
        (CT, (ExplicitVRLittleEndian, ImplicitVRLittleEndian)),
        (SC, (ExplicitVRLittleEndian, ImplicitVRLittleEndian)),
        (CT, encodable_syntaxes()),  # room left: the lossless syntaxes encoded on the fly, lowest priority
        (SC, encodable_syntaxes()),
    ]
    assert "1.2.840.10008.1.2.4.80" in encodable_syntaxes()  # JPEG-LS Lossless (pyjpegls, codecs extra)


def test_contexts_capped_at_128_keeping_every_fallback() -> None:
    stored = [(f"1.2.3.{n}", ts) for n in range(70) for ts in (ExplicitVRLittleEndian, JPEGBaseline8Bit)]
    got = propose_contexts(stored)
    assert len(got) == 128
    fallbacks = [c for c in got if tuple(c.transfer_syntaxes) == (ExplicitVRLittleEndian, ImplicitVRLittleEndian)]
    assert len(fallbacks) == 70


def test_count_elements() -> None:
    t = _Tally(10, completed=3, failed=1, warning=2)
    assert t.remaining == 4
    assert t.elements(remaining=True, pending=True) == {
        "NumberOfRemainingSuboperations": 4, "NumberOfCompletedSuboperations": 3,
        "NumberOfFailedSuboperations": 1, "NumberOfWarningSuboperations": 2,
    }
    assert "NumberOfRemainingSuboperations" not in t.elements(remaining=False)
    big = _Tally(70000, completed=66000, failed=5)
    assert big.elements(remaining=True, pending=True) == {}
    final = big.elements(remaining=False)
    assert final["NumberOfCompletedSuboperations"] is None and final["NumberOfFailedSuboperations"] == 5


def test_serves_both_models_and_has_no_per_response_timeout() -> None:
    options = RetrieveOptions()
    assert options.timeout is None
    uids = {c.abstract_syntax for c in RetrieveAddIn.presentation_contexts(RetrieveAddIn(options, None))}  # type: ignore[arg-type]
    assert uids == {"1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.1.3",
                    "1.2.840.10008.5.1.4.1.2.2.2", "1.2.840.10008.5.1.4.1.2.2.3"}
    assert set(RetrieveAddIn(options, None).handlers()) == {"C-MOVE", "C-GET"}  # type: ignore[arg-type]
