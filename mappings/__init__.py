"""FHIR code -> OMOP concept tables (CSV with provenance). See mappings/README.md for the format."""
from pathlib import Path

DIRECTORY = Path(__file__).parent
