"""A lean DICOM upper layer for the archive-facing bulk paths (requestor side only).

``pdu`` encodes and parses the PDUs, ``commands`` the DIMSE command sets, ``link``
runs one association over a socket. Retrieve, C-FIND and store-and-forward
(``proxy.store.drain``) use it; pynetdicom stays the DICOM stack everywhere else
(the listener, C-ECHO, C-MOVE requests). This package exists because a study
moved through the proxy crosses it PDU by PDU.
"""
