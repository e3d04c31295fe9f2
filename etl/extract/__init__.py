"""Sources of FHIR resources. Extraction knows nothing of OMOP: it yields raw records with a location."""
from etl.extract.files import FileSource, RawRecord, open_source

__all__ = ["FileSource", "RawRecord", "open_source"]
