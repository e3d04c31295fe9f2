"""Sources of FHIR resources. Extraction knows nothing of OMOP: it yields raw records with a location.

Files (Bulk Data NDJSON, Bundles), FHIR REST search and Bulk Data `$export` offer one interface:
`describe()`, `records(types=None, exclude=None)`, and optionally `is_snapshot`, `deleted`,
`incomplete`, `new_state()`, `close()`.
"""
from etl.extract.errors import AuthError, ExtractError, ServerError, UnreachableError
from etl.extract.files import FileSource, RawRecord
from etl.extract.sources import ServerOptions, is_server, open_source

__all__ = ["AuthError", "ExtractError", "FileSource", "RawRecord", "ServerError", "ServerOptions",
           "UnreachableError", "is_server", "open_source"]
