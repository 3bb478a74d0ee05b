"""fastencode.encode must produce exactly what pynetdicom's dsutils.encode produces."""

from __future__ import annotations

from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.sequence import Sequence
from pynetdicom import dimse_primitives as prim
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
from pynetdicom.dsutils import decode
from pynetdicom.dsutils import encode as reference

from proxy import fastencode
from proxy.fastencode import encode

FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "rtstruct.dcm",
         "JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "liver_1frame.dcm",
         "image_dfl.dcm", "nested_priv_SQ.dcm", "priv_SQ.dcm", "UN_sequence.dcm",
         "test-SR.dcm", "waveform_ecg.dcm", "examples_palette.dcm", "reportsi.dcm",
         "empty_charset_LEI.dcm", "GDCMJ2K_TextGBR.dcm"]


def as_received(ds: Dataset, implicit: bool) -> Dataset:
    """``ds`` as pynetdicom hands the proxy a data set from the wire: raw elements."""
    data = reference(ds, implicit, True)
    assert data is not None
    return decode(BytesIO(data), implicit, True)


def same(ds: Dataset, implicit: bool) -> bytes:
    expected = reference(ds, implicit, True)
    got = encode(ds, implicit, True)
    assert got == expected
    assert got is not None
    return got


@pytest.mark.filterwarnings("ignore::UserWarning")      # pydicom on its own test files
@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("name", FILES)
def test_data_sets_as_received_encode_identically(name: str, implicit: bool) -> None:
    path = get_testdata_file(name)
    assert path is not None
    original = dcmread(path, force=True)
    ds = as_received(original, implicit)
    out = same(ds, implicit)
    assert len(out) > 40


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_a_match_with_a_rewritten_element_encodes_identically(implicit: bool) -> None:
    match = Dataset()
    match.SpecificCharacterSet = "ISO_IR 192"
    match.QueryRetrieveLevel = "STUDY"
    match.PatientName = "Müller^Jürgen"
    match.PatientID = "P0001"
    match.StudyInstanceUID = "1.2.3.4.5"
    match.ModalitiesInStudy = ["CT", "MR"]
    match.NumberOfStudyRelatedInstances = 12
    match.ReferencedStudySequence = Sequence([Dataset()])
    match.ReferencedStudySequence[0].ReferencedSOPInstanceUID = "1.2.3"
    match.add_new(0x00091010, "LO", "private value")
    ds = as_received(match, implicit)
    ds.RetrieveAETitle = "QR_PROXY"                  # what the proxy rewrites
    del ds.PatientID
    same(ds, implicit)
    ds.SpecificCharacterSet = "ISO_IR 100"           # charset changed: pydicom converts
    same(ds, implicit)


def test_encoding_changes_fall_back_to_pydicom() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = as_received(dcmread(path), implicit=True)
    same(ds, False)                                  # implicit in, explicit out
    fresh = Dataset()
    fresh.PatientName = "A^B"
    same(fresh, True)
    same(Dataset(), True)
    assert encode(ds, True, False) == reference(ds, True, False)     # big endian


def primitives() -> list[object]:
    out: list[object] = []
    find = prim.C_FIND()
    find.MessageID, find.AffectedSOPClassUID, find.Priority = 7, "1.2.840.10008.5.1.4.1.2.2.1", 2
    find.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    out.append(find)
    rsp = prim.C_FIND()
    rsp.MessageIDBeingRespondedTo, rsp.Status = 7, 0xFF00
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    rsp.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    out.append(rsp)
    for cls in (prim.C_GET, prim.C_MOVE):
        r = cls()
        r.MessageIDBeingRespondedTo, r.Status = 3, 0xB000
        r.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.3"
        r.NumberOfRemainingSuboperations, r.NumberOfCompletedSuboperations = 0, 998
        r.NumberOfFailedSuboperations, r.NumberOfWarningSuboperations = 2, 0
        out.append(r)
    move = prim.C_MOVE()
    move.MessageID, move.AffectedSOPClassUID, move.Priority = 9, "1.2.840.10008.5.1.4.1.2.2.2", 0
    move.MoveDestination = "WS1"
    move.Identifier = BytesIO(b"")
    out.append(move)
    store = prim.C_STORE()
    store.MessageID, store.Priority = 65535, 1
    store.AffectedSOPClassUID, store.AffectedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3"
    store.MoveOriginatorApplicationEntityTitle, store.MoveOriginatorMessageID = "VIEWER", 12
    store.DataSet = BytesIO(b"")
    out.append(store)
    srsp = prim.C_STORE()
    srsp.MessageIDBeingRespondedTo, srsp.Status = 65535, 0xA700
    srsp.AffectedSOPClassUID, srsp.AffectedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.33"
    srsp.ErrorComment = "out of resources"
    out.append(srsp)
    echo = prim.C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 1, "1.2.840.10008.1.1"
    out.append(echo)
    cancel = prim.C_CANCEL()
    cancel.MessageIDBeingRespondedTo = 7
    out.append(cancel)
    return out


@pytest.mark.parametrize("primitive", primitives(), ids=lambda p: type(p).__name__)
def test_command_sets_of_dimse_messages_encode_identically(primitive: object) -> None:
    table = (_RQ_TO_MESSAGE if getattr(primitive, "MessageIDBeingRespondedTo", None) is None
             else _RSP_TO_MESSAGE)
    message = table[type(primitive)]()
    message.primitive_to_message(primitive)
    out = same(message.command_set, True)
    assert out.startswith(b"\x00\x00\x00\x00\x04\x00\x00\x00")   # (0000,0000) UL first


texts = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126,
                                       exclude_characters="\\"), max_size=40)


@settings(max_examples=150, deadline=None)
@given(name=texts, pid=texts, desc=texts, count=st.integers(0, 2**31 - 1),
       modalities=st.lists(st.sampled_from(["CT", "MR", "US", "XA"]), max_size=3),
       implicit=st.booleans(), rewrite=st.booleans())
def test_any_simple_match_encodes_identically(name: str, pid: str, desc: str, count: int,
                                              modalities: list[str], implicit: bool,
                                              rewrite: bool) -> None:
    match = Dataset()
    match.PatientName, match.PatientID, match.StudyDescription = name, pid, desc
    match.NumberOfStudyRelatedInstances = count
    match.ModalitiesInStudy = modalities
    match.StudyInstanceUID = "1.2.840.99999." + str(count)
    ds = as_received(match, implicit)
    if rewrite:
        ds.RetrieveAETitle = "QR_PROXY"
    same(ds, implicit)


def test_the_fast_paths_do_not_call_pydicom_s_dataset_writer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = as_received(dcmread(path), implicit=False)
    ds.RetrieveAETitle = "QR_PROXY"
    command = _RSP_TO_MESSAGE[prim.C_FIND]()
    command.primitive_to_message(primitives()[1])
    expected = [reference(ds, False, True), reference(command.command_set, True, True)]

    def refuse(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("fell back to pydicom's write_dataset")

    monkeypatch.setattr(fastencode, "_original", refuse)
    assert [encode(ds, False, True), encode(command.command_set, True, True)] == expected
