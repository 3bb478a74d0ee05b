"""WADO-RS (PS3.18 10.4) decisions and formats, pure: what the client accepts, the multipart
framing, which frames, what a metadata answer looks like.

Rule 1 (``instance_syntaxes``): a retrieve accepts ``multipart/related;
        type="application/dicom"`` (or ``*/*``, ``multipart/related`` alone); its
        ``transfer-syntax`` parameter picks the encoding: absent or ``*`` → each instance
        in its original syntax (PS3.18 8.7.3.5.2 makes Explicit VR Little Endian the
        default; the issue asks for the original, and viewers that want another name it),
        one UID → that syntax (the retrieve converts, ``proxy.retrieve.stream`` Rule 2).
        Several acceptable items: the first with the highest q. Nothing acceptable: 406.
Rule 2 (``Multipart``): each part is ``--boundary``, its headers, a blank line, the body;
        the message ends with ``--boundary--`` (RFC 2046 5.1); the boundary is random and
        is not in any body the proxy wrote (a Part-10 file is binary: 32 random bytes make
        a collision about 2^-128 per position — accepted, as every implementation does).
Rule 3 (``frame_numbers``): ``frames/{list}`` is a comma-separated list of 1-based frame
        numbers (PS3.18 10.4.1.1.4); anything else, 0, or a number above Number of Frames
        is a 400 / 404 naming it.
Rule 5 (``byte_range``): bulk data honours one ``Range: bytes=first-last`` (RFC 9110
        14.1.2: ``first-``, ``-suffix`` too): the part holds those bytes and the answer is
        206; a range outside the value is 416; several ranges or other units: the whole
        value (200), as RFC 9110 allows a server to ignore a Range it does not serve.
Rule 4 (``frames``): native pixel data is cut into frames of Rows * Columns * Samples
        per Pixel * Bits Allocated / 8 bytes; encapsulated pixel data gives each frame's
        fragments joined (``pydicom.encaps``), sent in its own media type
        (``FRAME_MEDIA_TYPES``) — the proxy never decodes a frame for WADO-RS.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

DICOM = "application/dicom"
OCTET = "application/octet-stream"
# PS3.18 Table 8.7.3-5: the media type of a frame in a compressed transfer syntax.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}


class RangeNotSatisfiable(Exception):
    """A byte range outside the value (416)."""


def byte_range(header: str, length: int) -> tuple[int, int] | None:
    """Rule 5: (first, last) inclusive of the one range asked for; None: the whole value."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec or "-" not in spec:
        return None
    first_text, _, last_text = (p.strip() for p in spec.partition("-"))
    try:
        if not first_text:                        # -suffix: the last bytes
            suffix = int(last_text)
            if suffix <= 0:
                raise RangeNotSatisfiable(f"bytes -{suffix} of {length}")
            return max(0, length - suffix), length - 1
        first = int(first_text)
        last = int(last_text) if last_text else length - 1
    except ValueError:
        return None
    if first > last or first >= length:
        raise RangeNotSatisfiable(f"bytes {first}-{last_text} of a {length}-byte value")
    return first, min(last, length - 1)


class NotAcceptable(ValueError):
    """Nothing the client accepts can be served (406)."""


class BadFrames(ValueError):
    """A frame list that is not one (400)."""


class NoSuchFrame(LookupError):
    """A frame number the instance does not have (404)."""


def _items(accept: str) -> list[tuple[float, str, dict[str, str]]]:
    out = []
    for position, item in enumerate(accept.split(",")):
        media, *raw = (p.strip() for p in item.split(";"))
        params = {}
        for p in raw:
            name, _, value = p.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 0.0
        if media and q > 0:
            out.append((-q, str(position), {"media": media.lower(), **params}))
    return [(q, p, params) for q, p, params in sorted(out)]


def instance_syntaxes(accept: str) -> tuple[str, ...] | None:
    """Rule 1: None for the original syntax, else the one the client named."""
    if not accept.strip():
        return None
    for _q, _p, params in _items(accept):
        media = params["media"]
        if media in ("*/*", "multipart/*"):
            return None
        if media != "multipart/related":
            continue
        if params.get("type", DICOM).lower() not in (DICOM, "application/*", "*/*"):
            continue
        syntax = params.get("transfer-syntax", "*")
        if syntax == "*":
            return None
        if UID(syntax).is_transfer_syntax:
            return (syntax,)
    raise NotAcceptable(f'WADO-RS sends multipart/related; type="{DICOM}" (transfer-syntax '
                        f'"*" or a transfer syntax UID); the request accepts only {accept}')


def metadata_acceptable(accept: str) -> None:
    """``/metadata`` answers DICOM JSON only."""
    if not accept.strip():
        return
    for _q, _p, params in _items(accept):
        if params["media"] in ("application/dicom+json", "application/json", "*/*",
                               "application/*"):
            return
    raise NotAcceptable(f"WADO-RS metadata is application/dicom+json; the request accepts "
                        f"only {accept}")


def frames_acceptable(accept: str, media: str) -> None:
    """A frame goes in its own media type (Rule 4): 406 unless the client takes it."""
    if not accept.strip():
        return
    for _q, _p, params in _items(accept):
        wanted = params["media"]
        if wanted in ("*/*", "multipart/*"):
            return
        if wanted == "multipart/related" and params.get("type", media).lower() in (
                media, "*/*", media.split("/")[0] + "/*"):
            return
    raise NotAcceptable(f'these frames are {media} (as the instance holds them: the proxy '
                        f'does not decode them); the request accepts only {accept}')


@dataclass(frozen=True)
class Multipart:
    """Rule 2: the framing of one multipart/related answer."""

    boundary: str
    type: str

    @classmethod
    def new(cls, type_: str) -> Multipart:
        return cls(secrets.token_hex(16), type_)

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="{self.type}"; boundary={self.boundary}'

    def head(self, media: str, location: str | None = None,
             content_range: str | None = None) -> bytes:
        lines = [f"--{self.boundary}", f"Content-Type: {media}"]
        if location:
            lines.append(f"Content-Location: {location}")
        if content_range:
            lines.append(f"Content-Range: {content_range}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def end(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()


def frame_numbers(text: str) -> list[int]:
    """Rule 3: ``"1,3,5"`` → [1, 3, 5]."""
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise BadFrames(f"frame list {text!r}: frames are numbered from 1, comma-separated")
        numbers.append(int(item))
    return numbers


def frame_media_type(transfer_syntax: str) -> str:
    """Rule 4: a frame's media type in the instance's syntax."""
    if UID(transfer_syntax).is_compressed:
        media = FRAME_MEDIA_TYPES.get(transfer_syntax)
        if media is None:
            raise NotAcceptable(f"frames of {UID(transfer_syntax).name} have no WADO-RS "
                                "media type the proxy sends without decoding them")
        return media
    return OCTET


def frames(ds: Dataset, transfer_syntax: str, wanted: list[int]) -> Iterator[bytes]:
    """Rule 4: the bytes of each wanted frame of ``ds`` (which holds its Pixel Data)."""
    count = int(ds.get("NumberOfFrames", 1) or 1)
    for number in wanted:
        if number > count:
            raise NoSuchFrame(f"frame {number}: the instance has {count} frame(s)")
    data: bytes = ds.PixelData
    if UID(transfer_syntax).is_compressed:
        all_frames = list(generate_frames(data, number_of_frames=count))
        for number in wanted:
            yield all_frames[number - 1]
        return
    size = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
            * int(ds.BitsAllocated)) // 8
    if int(ds.BitsAllocated) == 1:                   # packed bits: frames share bytes
        raise NoSuchFrame("1-bit pixel data is not cut into frames by the proxy")
    for number in wanted:
        start = (number - 1) * size
        yield data[start:start + size]
