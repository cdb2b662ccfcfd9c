"""Deployment definitions as portable JSON (format version 1): import all-or-nothing, export.

The format is a contract shared with other consoles: an unknown field is an error, a missing
optional field takes its default, and secrets are never part of it (``keys`` only lists which
roles are set). Both directions scale with the file, not with statements per row:

- format: the fields, reading the JSON, each entry checked for types and names;
- importing: each entry validated once (cleaning: the model's validators and messages, without
  a query per constraint), what exists loaded a chunk at a time, rows written in bulk;
- exporting: three queries whatever the number of deployments;
- trail: one audit event per team and run, never one per deployment.
"""

from routes.portable.exporting import export_definitions, export_payload
from routes.portable.format import (
    DEPLOYMENT_FIELDS,
    FILE_NAMES,
    FORMAT_VERSION,
    NESTED_FIELDS,
    OVERRIDE_FIELDS,
    VERIFICATION_FIELDS,
    ImportFailed,
    ImportReport,
    Problems,
    dump_payload,
    load_payload,
)
from routes.portable.importing import import_payload

__all__ = [
    "DEPLOYMENT_FIELDS",
    "FILE_NAMES",
    "FORMAT_VERSION",
    "NESTED_FIELDS",
    "OVERRIDE_FIELDS",
    "VERIFICATION_FIELDS",
    "ImportFailed",
    "ImportReport",
    "Problems",
    "dump_payload",
    "export_definitions",
    "export_payload",
    "import_payload",
    "load_payload",
]
