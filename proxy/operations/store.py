"""C-STORE: make the instance durable in the spool, answer, let the forwarders deliver it.

Rule 1: Success (0x0000) is answered only once the instance is on disk for
        every archive that will receive it (``Spool.commit``: fsync, rename,
        fsync directory). The bytes are kept exactly as received, in the
        negotiated transfer syntax — normally the file the listener received the
        data set into (``proxy.association`` Rule 2), moved into the spool, never decoded;
        its file meta names the sending and receiving AE titles (for a route
        with ``pass_calling_ae``, the drain calls as the sender).
Rule 2: which archives get it: the route's ``store_to``, narrowed per archive by
        ``store_filter`` (``routing.store_targets``). A route without
        ``store_to``, or an instance no archive of the route takes, is refused
        with 0x0124 (Refused: Not Authorized, PS3.7 Annex C.5) and a hint —
        the sender learns it was not stored, nothing is silently dropped.
Rule 3: when the instance would take the spool past ``[spool] max_bytes``, or the
        disk is full, the answer is 0xA700 (Refused: Out of Resources, PS3.4
        B.2.3) and nothing is written; any other failure to store is 0x0110
        (Processing Failure, PS3.7 C.4.2).
Rule 4: C-STOREs on a session marked ``inbound`` (instances an archive sends
        back for a C-MOVE, retrieve = "move") are not spooled: they go to
        ``services.plugins.inbound_store(event)``, which answers them.
Rule 5: one ``operation`` event per C-STORE answered; patient identifiers read
        from the header are protected in it (``record.protect``).
Rule 6: on a ``store = "relay"`` route Rules 1 and 3 give way to
        ``proxy.operations.store_relay``: the instance is forwarded while the
        workstation waits and the archive's own status is the answer; nothing is spooled.
        Its data set is forwarded as it arrives (``Request.inflow``): Rule 2 reads the
        header from its first bytes; the answer waits for the data set's end, and one
        that breaks off is 0xA700 (the workstation's association is gone or aborted).
"""

from __future__ import annotations

import errno
from contextlib import suppress
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from proxy import rawdataset
from proxy.config import RouteConfig
from proxy.inflow import Inflow, InflowBroken
from proxy.observe.logs import PHI_KEYWORDS
from proxy.operations import store_relay
from proxy.part10 import file_meta
from proxy.routing import InstanceFacts, store_targets
from proxy.services import OperationRecord, Services
from proxy.session import Request
from proxy.status import Status
from proxy.store.drain import publish
from proxy.store.spool import InstanceMeta as InstanceMeta  # used by STOW-RS too
from proxy.store.spool import SpoolFull, data_offset

_HEADER_TAGS = ["Modality", *sorted(k for k in PHI_KEYWORDS if k[0].isupper())]
_HEADER_BYTES = 64 * 1024
_HEADER_MAX = 16 << 20       # a header read from a data set still arriving, at most
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

Reply = tuple[int, str | None]


def handle(event: Request, services: Services) -> int | Dataset:
    session = services.session(event)
    received = _received_file(event)
    try:
        if session.data.get("inbound"):
            inbound_store = services.plugins.inbound_store
            assert inbound_store is not None    # sessions are marked inbound by proxy.retrieve
            return inbound_store(event)
        with services.operation(event, "C-STORE") as record:
            try:
                status, comment = _store(event, services, record, received)
            except Exception as exc:
                record.details["error"] = f"{type(exc).__name__}: {exc}"
                status, comment = Status.PROCESSING_FAILURE, "the proxy could not store it"
            record.status = status
        return _reply(status, comment, record.response)
    finally:
        if received is not None:
            # Still there only when it was not committed or buffered (Rules 1, 4).
            received.unlink(missing_ok=True)
        if event.inflow is not None:     # Rule 6: no answer before the data set's end
            with suppress(InflowBroken):
                event.inflow.wait_end()


def _store(event: Request, services: Services, record: OperationRecord,
           received: Path | None) -> Reply:
    session = services.session(event)
    route = session.route
    meta = InstanceMeta(event.sop_class, event.sop_instance, event.transfer_syntax,
                        session.info.calling_ae,
                        session.info.called_ae)
    record.details.update(sop_class=meta.sop_class, sop_instance_uid=meta.sop_instance,
                          transfer_syntax=meta.transfer_syntax)
    if route is None or not route.store_to:
        return not_stored(route.called_ae if route else session.info.called_ae, record)
    if event.inflow is not None:        # Rule 6, the data set still arriving
        return _relay_arriving(event, services, record, route, meta, event.inflow)
    encoded = None if received is not None else _part10(event, meta)
    targets = archives_for_instance(route, meta, received if received is not None
                                    else BytesIO(encoded or b""), record)
    if isinstance(targets, tuple):
        return targets
    if route.store == "relay":          # Rule 6
        return store_relay.forward(event, services, record, received, encoded)
    return spool_it(services, record, targets, meta, received, encoded)


def not_stored(name: str, record: OperationRecord) -> Reply:
    """Rule 2: a route without ``store_to``."""
    record.hint = (f"route {name} does not store instances: give it store_to = "
                   f"[\"<archive>\"] in rules.toml, or send to a route that has one")
    return Status.NOT_AUTHORIZED, f"{name} does not store instances"


def _relay_arriving(event: Request, services: Services, record: OperationRecord,
                    route: RouteConfig, meta: InstanceMeta, inflow: Inflow) -> Reply:
    """Rules 2 and 6 for a data set handed on as it arrives (``proxy.association`` Rule 2):
    the header is read from its first bytes, the rest goes to the archive as it comes; the
    answer waits for the data set's end whatever happens (``Inflow.wait_end``)."""
    prefix = _part10(event, meta)       # the file meta the header is read after
    try:
        try:
            wanted = _HEADER_BYTES
            while True:
                head = inflow.head(wanted)
                record.details.pop("header_error", None)    # only the last read's counts
                header = _header(BytesIO(prefix + head), record, meta.transfer_syntax)
                whole = inflow.ended and inflow.received == len(head)
                if header is not None or whole or len(head) >= _HEADER_MAX:
                    break
                wanted = 4 * len(head)                      # a header longer than usual
            targets = _targets(route, meta, header, record)
            if isinstance(targets, tuple):
                return targets
            return store_relay.forward(event, services, record, None, None, inflow)
        finally:
            with suppress(InflowBroken):     # what broke it first is what is reported
                inflow.wait_end()
            record.details["bytes"] = len(prefix) + inflow.received
    except InflowBroken as exc:
        record.details["error"] = str(exc)
        return Status.REFUSED_OUT_OF_RESOURCES, "the data set did not arrive whole"


def archives_for_instance(route: RouteConfig, meta: InstanceMeta, source: Path | BytesIO,
                          record: OperationRecord) -> list[str] | Reply:
    """Rule 2: the archives that take this instance (its header read for Modality), or
    the refusal when none does."""
    size = source.stat().st_size if isinstance(source, Path) else len(source.getvalue())
    record.details["bytes"] = size
    return _targets(route, meta, _header(source, record, meta.transfer_syntax), record)


def _targets(route: RouteConfig, meta: InstanceMeta, header: Dataset | None,
             record: OperationRecord) -> list[str] | Reply:
    modality = str(header.get("Modality", "") or "") if header is not None else ""
    facts = InstanceFacts(meta.sending_ae, meta.sop_class, modality)
    targets = store_targets(route, facts)
    record.archives = targets
    if not targets:
        record.hint = (f"no store_filter of route {route.called_ae} takes Modality "
                       f"{modality or '(none)'} from {facts.calling_ae}; widen store_filter in "
                       f"rules.toml if these instances should be kept")
        return Status.NOT_AUTHORIZED, "no archive of this route takes this instance"
    return targets


def spool_it(services: Services, record: OperationRecord, targets: list[str],
             meta: InstanceMeta, received: Path | None, encoded: bytes | None = None) -> Reply:
    """Rules 1 and 3: durable in the spool for ``targets`` (the file ``received`` is moved
    there), or why not."""
    spool = services.plugins.spool
    assert spool is not None            # proxy.store.drain.start opened it
    size = received.stat().st_size if received is not None else len(encoded or b"")
    try:
        if not spool.admits(size):
            raise SpoolFull
        if received is not None:
            entry = spool.commit(received, targets, meta)
        else:
            entry = spool.commit_bytes([encoded or b""], targets, meta)
    except SpoolFull:
        stats = spool.stats()
        record.hint = (f"spool full: {stats.used_bytes} of {spool.max_bytes} bytes used "
                       f"({stats.pending} instances pending, {stats.dead} dead letters); "
                       f"bring the archives back or raise [spool] max_bytes")
        return Status.REFUSED_OUT_OF_RESOURCES, "proxy spool full, retry later"
    except OSError as exc:
        record.details["error"] = f"{type(exc).__name__}: {exc}"
        if exc.errno in _DISK_FULL:
            record.hint = f"the disk holding {spool.root} is full"
            return Status.REFUSED_OUT_OF_RESOURCES, "proxy disk full, retry later"
        record.hint = f"check that {spool.root} is writable"
        return Status.PROCESSING_FAILURE, "the proxy could not store it"
    record.details["instance"] = entry.id
    publish(services, spool)
    return Status.SUCCESS, None


def _received_file(event: Request) -> Path | None:
    """The file the listener received the data set into (``proxy.association`` Rule 2)."""
    return event.dataset_path


def _part10(event: Request, meta: InstanceMeta) -> bytes:
    """The data set held in memory as a Part-10 file naming its sender, as the listener
    writes one: the spool forwards it on the sender's behalf when asked."""
    return file_meta(meta.sop_class, meta.sop_instance, meta.transfer_syntax,
                     sending_ae=meta.sending_ae, receiving_ae=meta.receiving_ae) + (
        event.data or b"")


def _header(source: Path | BytesIO, record: OperationRecord,
            syntax: str = "") -> Dataset | None:
    """Modality and patient identifiers only; the pixel data is never read. The first
    ``_HEADER_BYTES`` are indexed (``rawdataset.header``); pydicom reads what they do not
    hold whole."""
    try:
        if isinstance(source, Path):
            with source.open("rb") as f:
                head = f.read(_HEADER_BYTES)
        else:
            head = source.getvalue()
        header = None if syntax == ExplicitVRBigEndian else rawdataset.header(
            head[data_offset(head[:1024]):], syntax == ImplicitVRLittleEndian)
        if header is None:
            if isinstance(source, BytesIO):
                source.seek(0)
            header = dcmread(source, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        record.protect(header)
        return header
    except Exception as exc:  # a header pydicom cannot parse is still the archive's to judge
        record.details["header_error"] = f"{type(exc).__name__}"
        return None


def _reply(status: int, comment: str | None,
           extra: dict[str, Any] | None = None) -> int | Dataset:
    if (status == Status.SUCCESS or not comment) and not extra:
        return int(status)
    ds = Dataset()
    ds.Status = int(status)
    if comment and status != Status.SUCCESS:
        ds.ErrorComment = comment[:64]
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    return ds
