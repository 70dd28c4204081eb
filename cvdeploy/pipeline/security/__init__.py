"""Security assessment: is this artifact safe to hand to a model server?

A model file is code-adjacent: a pickle runs arbitrary code when it is loaded, an ONNX file can
point its external data at any file on the server (``../../etc/shadow``) and can need custom
operators that only a native library the server would have to load can run. This stage reads the
artifact without executing any of it (the ONNX protobuf is parsed, never run; pickles are
disassembled by ``picklescan``, never unpickled) and reports each risk as its own check.

The stage is :func:`assess_security` (:mod:`~cvdeploy.pipeline.security.assess`), over an
:mod:`~cvdeploy.pipeline.security.inventory` of the file or folder; pickle detection and scanning
live in :mod:`~cvdeploy.pipeline.security.pickles`, the ONNX graph checks in
:mod:`~cvdeploy.pipeline.security.onnx_graph`.
"""

from __future__ import annotations

from cvdeploy.pipeline.security.assess import assess_security
from cvdeploy.pipeline.security.onnx_graph import (
    STANDARD_OP_DOMAINS,
    external_data_files,
    onnx_footprint,
)
from cvdeploy.pipeline.security.pickles import PICKLE_SUFFIXES

__all__ = [
    "PICKLE_SUFFIXES",
    "STANDARD_OP_DOMAINS",
    "assess_security",
    "external_data_files",
    "onnx_footprint",
]
