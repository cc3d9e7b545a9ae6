"""Importers of published third-party checkpoints into the model store (offline, never served).

``dfshield models import --format FORMAT PATH --name NAME``; see :mod:`app.models.importers.core`.
"""

from app.models.importers.core import FORMATS, ImportReport, import_checkpoint
from app.models.importers.errors import CheckpointImportError

__all__ = ["FORMATS", "CheckpointImportError", "ImportReport", "import_checkpoint"]
