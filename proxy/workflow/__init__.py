"""Modality workflow through the proxy: what a modality sends besides its images.

Modality Performed Procedure Step (PS3.4 F.7): N-CREATE and N-SET received on a route
with ``mpps_to`` go to those archives (a RIS) — at once while the modality waits when
nothing is queued for the archive, else through a durable per-archive journal delivered
in order (``journal``, ``policy``, ``ris``, ``delivery``; the handler is
``proxy.operations.mpps``).
"""
