"""Modality workflow through the proxy: what a modality sends besides its images.

Modality Performed Procedure Step (PS3.4 F.7): N-CREATE and N-SET received on a route
with ``mpps_to`` go to those archives (a RIS) — at once while the modality waits when
nothing is queued for the archive, else through a durable per-archive journal delivered
in order (``journal``, ``policy``, ``ris``, ``delivery``; the handler is
``proxy.operations.mpps``).

Storage Commitment Push Model (PS3.4 J.3): an N-ACTION received on a route goes to its
``commit_to`` archive once the spool has delivered what it references; the archive's
N-EVENT-REPORT goes back to the modality (``commitments``, ``commit_policy``,
``commit_reports``, ``commitment``; the handlers are ``proxy.operations.commitment``).
"""
