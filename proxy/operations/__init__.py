"""One module per DIMSE operation the proxy answers, all with the same shape."""
