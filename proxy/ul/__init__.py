"""The archive-facing requestor link: blocking, bulk, on the proxy's one upper layer.

``link`` runs one association over a socket by driving
``proxy.dicom.connection.Association(role="requestor")``: the same PDU codecs
(``proxy.dicom.pdu``), PS3.8 state table (``proxy.dicom.states``) and DIMSE
reassembly (``proxy.dicom.dimse``) as the workstation side, read in place and
written with ``sendmsg``. Retrieve (C-GET), C-FIND, C-MOVE requests and
store-and-forward (``proxy.store.drain``, ``proxy.store.relay``) use it. This package
exists because a study moved through the proxy crosses it PDU by PDU, from threads
that block.
"""
