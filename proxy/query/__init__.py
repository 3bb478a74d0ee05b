"""Query: a C-FIND asked of one or more archives and answered as one.

- ``search``: a route's search answered as one, for a DIMSE C-FIND or a QIDO-RS request
  (fan-out, cap recovery, de-duplication or merge, recheck, final status);
- ``fanout``: one C-FIND over several archives at once, streamed through a bounded queue;
- ``matching`` (pure): PS3.4 C.2.2.2 attribute matching, for rechecking an archive's answer;
- ``merging`` (pure): which answers from different archives are the same entity, and how
  they merge;
- ``federation``: silent-cap detection, query splitting and recovery, the location cache
  (an extension: ``federation.install`` in ``proxy.app.EXTENSIONS``).

The handlers that run a search are ``proxy.operations.find`` (C-FIND) and
``proxy.web.qido_rs`` (QIDO-RS); retrieve uses the fan-out for its survey. Nothing here
imports an operation handler or the listener.
"""
