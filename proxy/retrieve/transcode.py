"""The proxy's own conversion of an instance, for when the archive could not convert it.

The archive converts: the proxy asks it for the syntaxes the receiver accepted
(``sopclasses.for_receiver``), as a direct retrieve would. Only an instance the archive
could not convert (it failed the sub-operation, then sent the instance in its own
syntax when asked again, ``puller``) reaches this module.

Rule 1: only towards what the receiver accepted for the instance's SOP class, and only
        to an uncompressed Little Endian syntax: Explicit or Implicit VR, in the
        receiver's order. Pixel data is decoded with pydicom's codecs (pylibjpeg for
        JPEG, JPEG-LS, JPEG 2000 and RLE; numpy for the native formats); nothing is
        ever compressed by the proxy (lossy is the archive's or the modality's call).
Rule 2: every element except the pixel data and what the decoding itself changes
        (Photometric Interpretation of YBR JPEG data, Planar Configuration, the
        encapsulation) keeps its value, SOP Instance UID included (decoding adds no
        information; the receiver asked for that instance); the File Meta Information is
        rebuilt by the sender for the new syntax.
Rule 3: a conversion that cannot be done (no codec, a corrupt stream, a big endian
        source pydicom will not rewrite) is ``None`` with the reason, never an
        exception: the sub-operation is then counted Failed with that reason.
Rule 4: ``as_accepted`` is the one choice every sender makes (a workstation's C-GET, a
        WADO-RS part): the instance as received when its syntax is accepted; else
        re-encoded between the two little-endian syntaxes (no pixel decoding, not a
        transcoding); else ``convert``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode

from proxy.retrieve.reception import Buffered

TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class Converted:
    transfer_syntax: str | None       # None: not converted, ``reason`` says why
    data: bytes | None = None         # None: the instance's own bytes, as received
    reason: str = ""
    transcoded: bool = True           # pixel data decoded (False: re-encoded only)


def as_accepted(item: Buffered, accepted: list[str]) -> Converted:
    """How ``item`` goes to a receiver accepting ``accepted`` for its SOP class (Rule 4)."""
    if item.transfer_syntax in accepted:
        return Converted(item.transfer_syntax, transcoded=False)
    little = next((ts for ts in accepted if ts in TARGETS), None)
    if item.transfer_syntax in TARGETS and little is not None:
        data = encode(item.dataset(), little == ImplicitVRLittleEndian, True)
        if data is not None:
            return Converted(little, bytes(data), transcoded=False)
    return convert(item, accepted)


def target_for(accepted: list[str]) -> str | None:
    """The syntax to convert to, of those the receiver accepted for the class (Rule 1)."""
    return next((ts for ts in accepted if ts in TARGETS), None)


def convert(item: Buffered, accepted: list[str]) -> Converted:
    """``item`` re-encoded in the first uncompressed syntax of ``accepted`` (Rules 1-3)."""
    target = target_for(accepted)
    if target is None:
        return Converted(None, reason=f"the receiver accepts {_names(accepted)}, which the "
                                      f"proxy does not convert to")
    try:
        ds = item.dataset()
        source = UID(item.transfer_syntax)
        if source.is_compressed:
            # pydicom's codecs (pylibjpeg); the instance keeps its identity: the receiver
            # asked for this SOP Instance UID, and decoding adds no information.
            ds.decompress(generate_instance_uid=False)
        elif not source.is_little_endian and "PixelData" in ds:
            return Converted(None, reason="a big endian instance with pixel data is not "
                                          "converted by the proxy")
        return Converted(target, _encode(ds, target))
    except Exception as exc:  # any codec failure is this sub-operation's, with its reason
        return Converted(None, reason=f"conversion from {UID(item.transfer_syntax).name} "
                                      f"failed: {type(exc).__name__}: {exc}"[:200])


def _encode(ds: Dataset, target: str) -> bytes:
    data = encode(ds, target == ImplicitVRLittleEndian, True)
    if data is None:
        raise ValueError("pydicom could not encode the decoded data set")
    return bytes(data)


def _names(syntaxes: list[str]) -> str:
    return ", ".join(UID(ts).name for ts in syntaxes) or "nothing"
