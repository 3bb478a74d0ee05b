"""dicom-proxy: a DICOM Query/Retrieve proxy and router.

The pipeline, in the order traffic flows:
  1. a workstation calls a route's AE title → ``listener`` accepts or rejects (``routing.admit``);
  2. the route decides which archives serve it (``routing``);
  3. one handler per DIMSE operation answers (``operations/``: echo, find, move, get, store);
  4. the archive side (``upstream``) talks to archives with the AE titles they expect;
  5. answers flow back; ``observe/`` turns typed events into logs and metrics.

Glossary:
  workstation / downstream — whoever called the proxy (a viewer, a modality, findscu);
  archive / upstream — a PACS or VNA the proxy calls (``[archives.*]``);
  route — a called AE title the proxy answers to, bound to one or more archives;
  federation — a route with several archives, queried in parallel, answers merged;
  destination — a C-MOVE target the proxy knows by AE title (``[destinations.*]``).
"""

__version__ = "0.1.0"
