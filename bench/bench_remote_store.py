"""Store-and-forward to a remote site: storescu → proxy → (a long link) → Orthanc, against
storescu → (the same long link) → Orthanc directly.

    python3 bench/bench_remote_store.py [--instances 100] [--rtt-ms 20] [--lanes 4]

The archive sits behind ``tests.e2e.long_link`` (every byte delayed by half the round
trip, each way; loopback bandwidth), as a PACS at another site would. Rows, each against
a fresh Orthanc: the modality storing across the link itself (one association, one
C-STORE per round trip at best); through the proxy with ``forward_associations = 1`` (the
default: the modality's side is local, the proxy's one association pays the round
trips); and with ``--lanes`` associations at once (``[archives.X] forward_associations``).
"ingest" is when storescu is done, "delivered" when the proxy logged the archive's
Success for the last instance. Ratios are rates against the direct row. Prints a markdown
table. Needs DCMTK (/usr/bin/storescu) and Orthanc (/usr/sbin/Orthanc).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_store import Run, storescu, through_proxy  # noqa: E402

from proxy.tools.synthetic import make_studies, write_studies  # noqa: E402
from tests.e2e.long_link import long_link  # noqa: E402
from tests.e2e.orthanc import OrthancArchive  # noqa: E402


def remote(files: list[Path], workdir: Path, delay: float, lanes: int) -> tuple[Run, Run]:
    n, size = len(files), sum(p.stat().st_size for p in files)
    with OrthancArchive("PACS") as archive, long_link(archive.dicom_port, delay) as link:
        ingest, done, cpu = through_proxy(files, workdir, archive, link.port, lanes)
    label = f"forward_associations = {lanes}"
    return (Run(f"proxy, {label}: ingest (modality done)", n, size, ingest),
            Run(f"proxy, {label}: delivered to Orthanc", n, size, done, cpu))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--size", type=int, default=512, help="rows = columns")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="round trip of the link")
    parser.add_argument("--lanes", type=int, default=4, help="forward_associations to compare")
    args = parser.parse_args()
    delay = args.rtt_ms / 2000.0
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        root = Path(tmp)
        files = write_studies(root / "data", make_studies(
            1, instances_per_series=args.instances, rows=args.size, cols=args.size,
            seed="remote"))
        n, size = len(files), sum(p.stat().st_size for p in files)
        with OrthancArchive("PACS") as archive, long_link(archive.dicom_port, delay) as link:
            direct = Run("direct: storescu → long link → Orthanc", n, size,
                         storescu(link.port, "PACS", files))
        rows = [direct, *remote(files, root / "one", delay, 1),
                *remote(files, root / "many", delay, args.lanes)]
    print(f"**{n} CT instances {args.size}x{args.size}, {size / n / 1e3:.0f} kB each, "
          f"to an archive {args.rtt_ms:g} ms away (round trip)**\n")
    print("| path | instances/s | MB/s | ratio vs direct | proxy CPU s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        cpu = f"{r.cpu_s:.1f}" if r.cpu_s is not None else ""
        print(f"| {r.label} | {r.rate:.1f} | {r.mb_s:.1f} | {r.rate / direct.rate:.2f} | {cpu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
