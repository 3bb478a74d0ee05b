"""DICOMweb (PS3.18): the HTTP front door of routes with ``dicomweb = true``.

- ``server``: the extension (``proxy.app.EXTENSIONS``): the aiohttp application on its own
  thread and event loop, its route table, one service module per PS3.18 service;
- ``http``: what every request goes through (middlewares): the one ``operation`` event per
  request, CORS, bearer tokens, errors as clear 4xx/5xx, gzip of JSON;
- ``qido_rs``: QIDO-RS (search) over ``proxy.query.search``, the C-FIND machinery;
- ``qido`` (pure): QIDO-RS query parameters → C-FIND identifier, level, paging;
- ``dicomjson`` (pure): a data set → the DICOM JSON Model (PS3.18 F.2).

WADO-RS and STOW-RS slot in as ``wado_rs`` and ``stow_rs`` beside ``qido_rs``, each a row
of ``server.ROUTES``.
"""
