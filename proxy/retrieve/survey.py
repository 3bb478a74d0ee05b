"""Before anything moves: how many instances, which SOP classes and syntaxes, who holds them.

Rule 1 (fast path): a STUDY-level retrieve first asks every candidate archive one
        STUDY-level C-FIND for Number of Study Related Instances and SOP Classes in
        Study (``sopclasses.count_identifier``). When exactly one archive holds the
        study and answers both, that is the plan: the count for the responses, the
        classes for the contexts — one response per study (~50 ms on Orthanc)
        instead of one per instance (~2-5 ms each, seconds for a big study, all of
        it before the first instance could move). The instances are listed only if
        some go missing (``list_instances``), to name them in the Failed SOP
        Instance UID List.
Rule 2 (full survey): otherwise (other levels, a federation holding the study in
        several places, an archive that does not return those keys) one IMAGE-level
        C-FIND per archive (``sopclasses.survey_identifier``) lists every instance:
        its SOP class, transfer syntax when the archive says, and which archive holds
        it (route order decides who holds an instance first).
Rule 3: every C-FIND is one ``upstream`` event; matches feed the federation's
        location cache (``services.plugins.remember_location``) when present.
Rule 4: the C-FINDs match on what selects the retrieve (``identifiers.selecting_keys``):
        its unique keys, or — when the level's unique key is empty, e.g. a selection by
        Accession Number — every key given, so the archive's own matching decides; the
        level's unique key values found are kept (``Survey.selected``) for the retrieve
        to name them (``identifiers.upstream_identifier``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom import Dataset

from proxy.cancel import CancelToken
from proxy.query.fanout import Match, Outcome, fan_out
from proxy.retrieve import sopclasses
from proxy.retrieve.identifiers import LEVEL_KEYS, with_selection
from proxy.services import Services
from proxy.session import Request
from proxy.status import PENDING, Status
from proxy.upstream import ArchiveClient


@dataclass
class Survey:
    """What the survey found (Rules 1-2)."""

    holdings: dict[str, list[sopclasses.Instance]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)     # archive → why
    timed_out: set[str] = field(default_factory=set)          # failed ones: no answer in time
    instances: dict[str, sopclasses.Instance] = field(default_factory=dict)
    fast: bool = False                # Rule 1: counted, not listed
    count: int = 0                    # instances the holding archive said it has
    classes: list[str] = field(default_factory=list)
    selected: list[str] = field(default_factory=list)   # the level's unique keys (Rule 4)

    @property
    def blind(self) -> bool:
        return not self.holdings

    @property
    def empty(self) -> bool:
        """Nothing to retrieve, and every archive could say so."""
        return not self.instances and not self.count and not self.failed

    def described(self) -> list[sopclasses.Instance]:
        """The instances to negotiate for (one stand-in per class on the fast path)."""
        if self.instances:
            return list(self.instances.values())
        return [sopclasses.Instance("", sop_class) for sop_class in self.classes]


def survey(services: Services, event: Request, archives: list[str], identifier: Dataset,
           level: str, find_model: str, token: CancelToken, phi: list[str]) -> Survey:
    if level == "STUDY":
        quick = _counted(services, event, archives, identifier, find_model, token, phi)
        if quick is not None:
            return quick
    return list_instances(services, event, archives, identifier, find_model, token, phi,
                          level)


def _counted(services: Services, event: Request, archives: list[str], identifier: Dataset,
             find_model: str, token: CancelToken, phi: list[str]) -> Survey | None:
    query = with_selection(sopclasses.count_identifier(identifier), identifier, "STUDY")
    matches, failed, _late = _ask(services, event, archives, query, find_model, token, phi,
                                  "STUDY")
    holders = [name for name in archives if matches[name]]
    if len(holders) != 1 or failed:
        return None
    counted = [sopclasses.count_of(ds) for ds in matches[holders[0]]]
    if any(c is None for c in counted):
        return None
    result = Survey(fast=True, holdings={holders[0]: []},
                    selected=_values(matches[holders[0]], "STUDY"))
    for count, classes in (c for c in counted if c is not None):
        result.count += count
        result.classes += [uid for uid in classes if uid not in result.classes]
    return result


def list_instances(services: Services, event: Request, archives: list[str],
                   identifier: Dataset, find_model: str, token: CancelToken,
                   phi: list[str], level: str) -> Survey:
    """The full survey (Rule 2): one IMAGE-level C-FIND per archive, in parallel."""
    query = with_selection(sopclasses.survey_identifier(identifier), identifier, level)
    if LEVEL_KEYS[level] not in query:
        setattr(query, LEVEL_KEYS[level], "")      # a return key: Rule 4
    matches, failed, late = _ask(services, event, archives, query, find_model, token, phi,
                                 "IMAGE")
    result = Survey(failed=failed, timed_out=late)
    for name in archives:
        result.selected += _values(matches[name], level)
        found = [inst for inst in map(sopclasses.instance_of, matches[name]) if inst]
        if found or name not in failed:
            result.holdings[name] = found
        for inst in found:
            result.instances.setdefault(inst.uid, inst)
    result.count = len(result.instances)
    result.selected = list(dict.fromkeys(result.selected))
    return result


def _values(matches: list[Dataset], level: str) -> list[str]:
    """The level's unique key values of ``matches``, once each, in order (Rule 4)."""
    found = (str(ds.get(LEVEL_KEYS[level], "") or "").strip(" \0") for ds in matches)
    return list(dict.fromkeys(v for v in found if v))


def _ask(services: Services, event: Request, archives: list[str], query: Dataset,
         find_model: str, token: CancelToken, phi: list[str], level: str,
         ) -> tuple[dict[str, list[Dataset]], dict[str, str], set[str]]:
    """One C-FIND per archive in parallel: matches per archive, why archives failed, and
    which of them failed by not answering in time."""
    matches: dict[str, list[Dataset]] = {name: [] for name in archives}
    failed: dict[str, str] = {}
    late: set[str] = set()
    remember = services.plugins.remember_location

    def ask(client: ArchiveClient, tok: CancelToken) -> Iterator[tuple[int | None,
                                                                       Dataset | None]]:
        with services.upstream_call(client.peer.name, "C-FIND", event, phi) as call:
            count = 0
            for status, ds in client.find(query, find_model, tok):
                if ds is not None and status in PENDING:
                    count += 1
                else:
                    call["status"] = status
                yield status, ds
            call["details"] = {"purpose": "retrieve survey", "level": level, "matches": count}

    clients = {name: services.archive(name, event) for name in archives}
    for item in fan_out(clients, ask, token):
        if isinstance(item, Match):
            matches[item.archive].append(item.identifier)
            if remember is not None:
                remember(item.archive, level, item.identifier)
        elif isinstance(item, Outcome):
            if item.error is not None:
                failed[item.archive] = item.error.reason
                if item.error.kind == "timeout":
                    late.add(item.archive)
            elif item.status != Status.SUCCESS:
                failed[item.archive] = f"survey C-FIND answered 0x{item.status or 0:04X}"
    return matches, failed, late
