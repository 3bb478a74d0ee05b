"""A lean DICOM upper layer for the archive-facing bulk paths (requestor side only).

``link`` runs one association over a socket; its PDUs are ``proxy.dicom.pdu``, its
DIMSE command sets ``proxy.dicom.commands``. Retrieve, C-FIND and store-and-forward
(``proxy.store.drain``) use it; pynetdicom stays the DICOM stack everywhere else
(the listener, C-ECHO, C-MOVE requests). This package exists because a study
moved through the proxy crosses it PDU by PDU.
"""
