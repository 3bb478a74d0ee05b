"""C-FIND: relay a query to the route's archive(s) and stream the matches back.

The search itself (fan-out, cap recovery, de-duplication, merge, final status) is
``proxy.query.search``, shared with QIDO-RS; this module makes it a DIMSE answer.

Rule 1: the workstation's identifier goes upstream unchanged (match and return
        keys); each match is sent downstream as soon as it arrives. Both pass as the
        bytes they came in: the proxy reads elements with ``proxy.rawtext`` (never
        converting one in place, which would make pynetdicom re-encode it) and writes
        them with ``proxy.fastencode`` (``proxy.responder``) — whatever the Specific
        Character Set.
Rule 2: one archive: every match and its final status are passed back as is —
        a route never drops what its archive returned. Several archives
        (federation): matches are de-duplicated by the level's unique key across
        archives only (``proxy.query.merging`` rules 1-1b: an archive's own answers are
        never duplicates of each other), and the final status is chosen by
        ``proxy.query.search.final_status`` (documented there).
        Route ``merge = "stream"`` (default): the first answer for an entity is
        sent at once, later ones dropped and counted (``duplicates``).
        ``merge = "complete"``: every answer is collected, then merged per entity
        by ``proxy.query.merging.merge_all`` (empty keys filled from later archives,
        counts take the larger) and sent when the last archive has answered.
        (``proxy.query.search`` Rules 2-6.)
Rule 2b: ``recheck_matches = true``: each match is re-checked against the
        workstation's query with ``proxy.query.matching.matches`` (PS3.4 C.2.2.2);
        non-matching ones are dropped and counted (``recheck_dropped``).
Rule 2c: every archive that answers for an entity is remembered
        (``remember_location``), duplicates included, before de-duplication.
Rule 3: Retrieve AE Title (0008,0054) in every match names the route's AE
        title, so the workstation retrieves through the proxy.
Rule 4: a C-CANCEL from the workstation is passed to every archive; the
        workstation then gets Cancel (0xFE00).
Rule 5: back-pressure: each match yielded is sent before the next is taken, the send
        waiting while the workstation is behind (``proxy.listener`` Rule 4); when its
        link is gone (the generator is closed at its ``yield``) the archives get a
        C-CANCEL and the operation ends with no status.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom import Dataset
from pydicom.tag import Tag

from proxy.contexts import FIND_MODELS
from proxy.query.fanout import workstation_syntax
from proxy.query.merging import WORKLIST
from proxy.query.search import Asker, search
from proxy.rawdataset import splice_text
from proxy.rawtext import element, set_text, text_values
from proxy.services import OperationRecord, Services
from proxy.session import Request
from proxy.status import Status
from proxy.upstream import ArchiveClient

Response = tuple[int | Dataset, Dataset | None]
_RETRIEVE_AE = Tag(0x00080054)
_LEVEL = Tag(0x00080052)


def handle(event: Request, services: Services) -> Iterator[Response]:
    session = services.session(event)
    route = session.route
    with services.operation(event, "C-FIND") as record:
        identifier: Dataset = event.identifier
        model = str(event.sop_class)
        level = read_query(record, identifier)
        if FIND_MODELS.get(model) == WORKLIST:    # no Query/Retrieve Level (PS3.4 K.6)
            level = record.details["level"] = WORKLIST
        if route is None:  # cannot happen after admission; answer rather than crash
            record.status = Status.UNABLE_TO_PROCESS
            yield _failure(record.status, "no route for this association")
            return
        record.archives = list(route.archives)
        clients = {name: services.archive(name, event) for name in route.archives}
        yield from _relay(event, services, record, clients, identifier, model, level,
                          route.called_ae, merge=route.merge, recheck=route.recheck_matches)


def _relay(event: Request, services: Services, record: OperationRecord,
           clients: dict[str, ArchiveClient], identifier: Dataset, model: str, level: str,
           retrieve_ae: str, merge: str = "stream", recheck: bool = False) -> Iterator[Response]:
    """The route's search (``proxy.query.search``), each match sent as a C-FIND response."""
    asker = Asker(services.session(event).info, event.cancel, workstation_syntax(event),
                  event.link_up, gone=("the workstation's association ended before the "
                                       "answer was sent (it stopped reading, aborted or "
                                       "went away)"))
    yield from (_deliver(record, ds, status, retrieve_ae) for status, ds in search(
        services, clients, identifier, model, level, asker, record, merge=merge,
        recheck=recheck))
    if record.status is None or record.status == Status.SUCCESS:   # gone (Rule 5), or done
        return
    comment = record.hint if record.status not in (Status.CANCEL,) else None
    yield _failure(record.status, comment)


def read_query(record: OperationRecord, identifier: Dataset) -> str:
    """Note the workstation's query in ``record`` (level, log summary, PHI); its level.

    Every element is read, none converted (Rule 1): the identifier goes upstream as is.
    """
    level = "\\".join(text_values(identifier, _LEVEL)).strip().upper()
    record.details.update(level=level, matches=0, query=query_summary(identifier))
    record.protect(identifier)
    return level


def _deliver(record: OperationRecord, ds: Dataset, status: int, retrieve_ae: str) -> Response:
    if _RETRIEVE_AE in ds:          # raw bytes: the SCP copies them, no value conversion
        value = retrieve_ae.encode("ascii")
        if not splice_text(ds, _RETRIEVE_AE, value + b" " * (len(value) % 2)):
            set_text(ds, _RETRIEVE_AE, "AE", retrieve_ae)
    record.details["matches"] += 1
    record.protect(ds)
    return status, ds


def _failure(status: int, comment: str | None) -> Response:
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = comment[:64]
    return ds, None


def query_summary(identifier: Dataset) -> dict[str, str]:
    """The non-empty matching keys of a query, for the log (PHI scrubbed there).

    Each element is decoded apart (``rawtext.element``): the identifier itself goes
    upstream as the workstation's bytes (Rule 1).
    """
    out: dict[str, str] = {}
    for tag in list(identifier.keys()):
        elem = element(identifier, tag)
        if elem is None or elem.VR == "SQ" or elem.keyword in (
                "", "QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        value = str(elem.value) if elem.value not in (None, "") else ""
        if value:
            out[elem.keyword] = value[:128]
    return out
