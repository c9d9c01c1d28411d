"""Interchange with other tools: NIR graphs (:mod:`stdbp.interop.nir`). The ``nir`` package is imported only when used."""

from .nir import export_nir, import_nir, read_nir, write_nir

__all__ = ["export_nir", "import_nir", "read_nir", "write_nir"]
