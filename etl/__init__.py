"""DLM registry ETL: extract FHIR, stage, map to OMOP CDM v5.4, derive lesion outcomes, check, analyse."""
