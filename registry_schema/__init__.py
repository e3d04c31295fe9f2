"""Registry schema: OMOP CDM v5.4 (generated from the OHDSI spec), the DLM extension and analyst views.

Nothing here imports `etl`: the schema is usable by any tool that wants to read or create the registry.
"""
from registry_schema.cdm import cdm_tables, load_field_spec
from registry_schema.dlm import dlm_tables, staging_tables
from registry_schema.registry import SchemaNames, build_metadata, create_registry
from registry_schema.views import create_views, view_definitions

__all__ = [
    "SchemaNames", "build_metadata", "cdm_tables", "create_registry", "create_views", "dlm_tables",
    "load_field_spec", "staging_tables", "view_definitions",
]
