"""Fixtures for end-to-end tests against real peers (Orthanc, DCMTK).

Rule 1: every peer a fixture starts is stopped at teardown, even when the test
        fails; an ``atexit`` hook in ``processes`` is the last safety net.
Rule 2: without /usr/sbin/Orthanc or DCMTK, every test here is skipped with
        the reason (CI installs both; this is for dev machines only).
Rule 3: all tests collected here carry the ``e2e`` marker (``-m "not e2e"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.data import SyntheticSet, build_synthetic_set
from tests.e2e.dcmtk import StoreSCP, tool
from tests.e2e.orthanc import ORTHANC_BINARY, OrthancArchive
from tests.e2e.proxy_harness import proxy_factory  # noqa: F401  (the proxy under test)

_HERE = Path(__file__).parent
_REQUIRED = (ORTHANC_BINARY, *(Path(tool(t)) for t in ("findscu", "getscu", "movescu")))
_REQUIRED += tuple(Path(tool(t)) for t in ("storescu", "storescp", "echoscu"))


def _missing_peers() -> list[str]:
    return [str(path) for path in _REQUIRED if not path.exists()]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end test against real Orthanc/DCMTK peers")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = _missing_peers()
    skip = pytest.mark.skip(reason=f"e2e peers not installed: {', '.join(missing)}")
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)
            if missing:
                item.add_marker(skip)


OrthancFactory = Callable[..., OrthancArchive]
StoreSCPFactory = Callable[..., StoreSCP]


@pytest.fixture
def orthanc_factory() -> Iterator[OrthancFactory]:
    """``make(aet="ORTHANC", **OrthancArchive options)`` → a started archive.

    Every archive made is killed and its temp dir removed at teardown.
    """
    made: list[OrthancArchive] = []

    def make(aet: str = "ORTHANC", **options: Any) -> OrthancArchive:
        archive = OrthancArchive(aet, **options)
        made.append(archive)
        return archive.start()

    yield make
    for archive in made:
        archive.close()


@pytest.fixture
def store_scp_factory(tmp_path: Path) -> Iterator[StoreSCPFactory]:
    """``make(aet="STORESCP", **StoreSCP options)`` → a started storescp on a free port."""
    made: list[StoreSCP] = []

    def make(aet: str = "STORESCP", **options: Any) -> StoreSCP:
        options.setdefault("output_dir", tmp_path / f"storescp-{aet.lower()}-{len(made)}")
        scp = StoreSCP(aet, **options)
        made.append(scp)
        return scp.start()

    yield make
    for scp in made:
        scp.close()


@pytest.fixture(scope="session")
def synthetic_studies(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSet:
    """5 studies x 2 series x 2 instances (seed "e2e"); study k dated 2020-01-01 + k days."""
    return build_synthetic_set(tmp_path_factory.mktemp("synthetic"))
