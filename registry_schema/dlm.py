"""The lesion-level DLM extension, the run bookkeeping tables and the raw FHIR staging area.

OMOP has no place for "this liver lesion, seen on these studies, handled this way at surgery", so the
registry adds lesion tables keyed to OMOP person / procedure_occurrence ids. Ids are BIGINT like CDM ids.
"""
from __future__ import annotations

import sqlalchemy as sa

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _col(name, type_, nullable=True, comment=None, **kw):
    return sa.Column(name, type_, nullable=nullable, comment=comment, **kw)


def dlm_tables(metadata: sa.MetaData, schema: str | None = None) -> dict[str, sa.Table]:
    """Lesion tables, derived per-patient course, lineage and run bookkeeping."""
    t = {}
    t["dlm_lesion"] = sa.Table(
        "dlm_lesion", metadata,
        _col("lesion_id", Id, False, "registry id of one liver metastasis", primary_key=True, autoincrement=False),
        _col("person_id", Id, False, "OMOP person.person_id"),
        _col("lesion_source_value", sa.String(64), False, "keyed pseudonym of the BodyStructure identifier"),
        _col("liver_segment", sa.String(8), comment="Couinaud segment 1..8, 4a/4b, or 5/6 across two"),
        schema=schema, comment="One row per liver metastasis (mCODE Tumor BodyStructure).",
    )
    t["dlm_lesion_assessment"] = sa.Table(
        "dlm_lesion_assessment", metadata,
        _col("assessment_id", Id, False, primary_key=True, autoincrement=False),
        _col("lesion_id", Id, False, "dlm_lesion.lesion_id"),
        _col("person_id", Id, False),
        _col("assessment_date", sa.Date, False),
        _col("modality", sa.String(16), False, "ct | mri | ious | ce_ious | pathology"),
        _col("finding", sa.String(24), False,
             "visible | not_visible | found_on_ious | not_found_on_ious | viable_tumor | no_viable_tumor"),
        _col("size_mm", sa.Float),
        _col("mri_protocol_met", sa.Boolean, comment="MRI with DWI and hepatobiliary phase (DREAM protocol)"),
        _col("procedure_occurrence_id", Id, comment="the study or surgery this finding belongs to"),
        _col("source_key", sa.String(200), False, "FHIR Observation the finding came from"),
        schema=schema, comment="One row per lesion finding on an imaging study, IOUS or pathology.",
    )
    t["dlm_text_comparison"] = sa.Table(
        "dlm_text_comparison", metadata,
        _col("comparison_id", Id, False, primary_key=True, autoincrement=False),
        _col("lesion_id", Id, False, "dlm_lesion.lesion_id"),
        _col("person_id", Id, False),
        _col("fact", sa.String(16), False, "the modality (ct, mri, ious, ce_ious, pathology) or `handling`"),
        _col("fact_date", sa.Date, False),
        _col("structured_finding", sa.String(24), False, "kept"),
        _col("text_finding", sa.String(24), False, "read from the note (NOTE_NLP), not used"),
        _col("agrees", sa.Boolean, False),
        _col("note_source_key", sa.String(200), False, "the FHIR report or document the text came from"),
        schema=schema, comment="A text finding of a lesion fact that structured data also holds: the structured "
                               "one is used; disagreements are a quality warning (DLM13).",
    )
    t["dlm_lesion_handling"] = sa.Table(
        "dlm_lesion_handling", metadata,
        _col("handling_id", Id, False, primary_key=True, autoincrement=False),
        _col("lesion_id", Id, False),
        _col("person_id", Id, False),
        _col("surgery_date", sa.Date, False),
        _col("handling", sa.String(16), False, "resected | ablated | left_in_place"),
        _col("procedure_occurrence_id", Id, comment="the hepatectomy"),
        _col("source_key", sa.String(200), False),
        schema=schema, comment="How each lesion was handled at hepatectomy.",
    )
    t["dlm_clinical_event"] = sa.Table(
        "dlm_clinical_event", metadata,
        _col("event_id", Id, False, primary_key=True, autoincrement=False),
        _col("person_id", Id, False),
        _col("event", sa.String(24), False, "chemotherapy | hepatectomy | ious | ce_ious | recurrence | death"),
        _col("start_date", sa.Date, False),
        _col("end_date", sa.Date),
        _col("omop_table", sa.String(32)),
        _col("omop_id", Id),
        schema=schema, comment="Dated events of the DLM time line, each pointing at its OMOP row.",
    )
    t["dlm_lesion_outcome"] = sa.Table(
        "dlm_lesion_outcome", metadata,
        _col("lesion_id", Id, False, primary_key=True, autoincrement=False),
        _col("person_id", Id, False),
        _col("dlm_group", sa.String(32), False,
             "not_disappeared | ct_disappeared_mri_visible | ct_and_mri_disappeared | ct_disappeared_mri_missing"
             " | not_visible_at_baseline | no_post_chemo_ct | no_chemotherapy"),
        _col("outcome", sa.String(16), comment="true_negative | residual | unevaluable (DLMs only)"),
        _col("outcome_basis", sa.String(16), comment="pathology | follow_up"),
        _col("outcome_date", sa.Date),
        _col("unevaluable_reason", sa.String(64)),
        _col("handling", sa.String(16)),
        _col("mri_protocol_met", sa.Boolean, comment="post-chemotherapy MRI had DWI and hepatobiliary phase"),
        _col("baseline_date", sa.Date, comment="latest baseline study showing the lesion"),
        _col("baseline_size_mm", sa.Float, comment="largest size on baseline imaging"),
        _col("post_ct_date", sa.Date, comment="the post-chemotherapy CT that decided the group"),
        _col("post_mri_date", sa.Date, comment="the post-chemotherapy MRI that decided the group"),
        _col("followup_regrowth_date", sa.Date,
             comment="first follow-up CT/MRI after time zero showing the lesion (lesions not resected)"),
        _col("last_followup_date", sa.Date,
             comment="last follow-up CT/MRI after time zero assessing the lesion (lesions not resected)"),
        _col("followup_window_months", sa.Float, False),
        schema=schema, comment="Derived group and outcome of each lesion (rules in docs/fhir_profile.md).",
    )
    t["dlm_patient_course"] = sa.Table(
        "dlm_patient_course", metadata,
        _col("person_id", Id, False, primary_key=True, autoincrement=False),
        _col("chemo_start_date", sa.Date), _col("chemo_end_date", sa.Date),
        _col("first_hepatectomy_date", sa.Date),
        _col("t0_date", sa.Date, comment="time zero: the last (completing) hepatectomy"),
        _col("ce_ious", sa.Boolean), _col("recurrence_date", sa.Date), _col("death_date", sa.Date),
        _col("last_contact_date", sa.Date),
        _col("strategy", sa.String(24), comment="all_dlm_removed | dlm_left_behind | null"),
        _col("rfs_months", sa.Float), _col("rfs_event", sa.Integer),
        _col("os_months", sa.Float), _col("os_event", sa.Integer),
        _col("chemo_regimen", sa.String(32),
             comment="pre-operative backbone: oxaliplatin_and_irinotecan | oxaliplatin_based | irinotecan_based"
                     " | fluoropyrimidine_only | other | unknown"),
        _col("chemo_targeted_agent", sa.String(32),
             comment="anti_vegf | anti_egfr | anti_vegf_and_anti_egfr | none | unknown"),
        schema=schema, comment="Derived per-patient course and survival times.",
    )
    t["dlm_lineage"] = sa.Table(
        "dlm_lineage", metadata,
        _col("omop_table", sa.String(32), False, primary_key=True),
        _col("source_key", sa.String(200), False, "FHIR Type/id (#part when one resource gives several rows)",
             primary_key=True),
        _col("omop_id", Id, False),
        _col("fhir_version_id", sa.String(64)),
        _col("patient_key", sa.String(64), comment="keyed pseudonym of the patient the row belongs to (a patient's "
                                                   "ids are read with its batch); '' when no longer known"),
        sa.Index("idx_dlm_lineage_patient_key", "patient_key"),
        sa.Index("idx_dlm_lineage_omop_id", "omop_table", "omop_id"),
        schema=schema, comment="FHIR resource identity <-> OMOP row id; keeps ids stable across runs.",
    )
    t["dlm_patient_digest"] = sa.Table(
        "dlm_patient_digest", metadata,
        _col("patient_key", sa.String(64), False, "keyed pseudonym of the patient", primary_key=True),
        _col("digest", sa.String(64), False,
             "hash of the patient's staged resources and of the mapping code, mappings and settings"),
        _col("person_id", Id, comment="OMOP person.person_id the patient was mapped to (NULL: no person row)"),
        _col("run_id", sa.String(36), comment="the run that last mapped the patient"),
        _col("map_notes", sa.Text, comment="JSON: the warnings and unmapped codes of the patient's mapping"),
        schema=schema, comment="What each patient's registry rows were mapped from: a run re-maps only patients "
                               "whose digest changed and removes those no longer staged.",
    )
    t["dlm_run"] = sa.Table(
        "dlm_run", metadata,
        _col("run_id", sa.String(36), False, primary_key=True),
        _col("started_at", sa.DateTime, False), _col("finished_at", sa.DateTime),
        _col("status", sa.String(16), False, "running | published | failed"),
        _col("source", sa.String(500)), _col("message", sa.Text),
        _col("resources_read", sa.Integer), _col("loaded", sa.Integer),
        _col("quarantined", sa.Integer), _col("excluded", sa.Integer),
        schema=schema, comment="One row per `dlmreg run`.",
    )
    t["dlm_extract_state"] = sa.Table(
        "dlm_extract_state", metadata,
        _col("source_key", sa.String(500), False, "the source, e.g. rest:https://host/fhir", primary_key=True),
        _col("name", sa.String(64), False, "a resource type (its _lastUpdated watermark) or _bulk (_since)",
             primary_key=True),
        _col("value", sa.String(64), False, "server time to resume from (ISO 8601)"),
        schema=schema, comment="Incremental extraction watermarks, saved with the staged data they cover.",
    )
    t["dlm_quarantine"] = sa.Table(
        "dlm_quarantine", metadata,
        _col("quarantine_id", Id, False, primary_key=True, autoincrement=True),
        _col("run_id", sa.String(36), False),
        _col("location", sa.String(500), False, "file:line or URL of the rejected input"),
        _col("resource_type", sa.String(64)),
        _col("reason", sa.Text, False),
        _col("sha256", sa.String(64), False, "hash of the raw text as received"),
        _col("raw_text", sa.Text, comment="the rejected JSON de-identified like staging; NULL when it did not parse "
                                          "(unparseable text cannot be cleaned, so only its hash is kept)"),
        schema=schema, comment="Inputs that could not be loaded, with the reason.",
    )
    t["dlm_unmapped_code"] = sa.Table(
        "dlm_unmapped_code", metadata,
        _col("run_id", sa.String(36), False, primary_key=True),
        _col("source_system", sa.String(255), False, primary_key=True),
        _col("source_code", sa.String(255), False, primary_key=True),
        _col("field", sa.String(64), False, primary_key=True, comment="FHIR type.element the code came from"),
        _col("reason", sa.String(64), False, comment="no mapping row | mapped to concept_id 0 (no verified concept)"),
        _col("occurrences", sa.Integer, False),
        schema=schema, comment="Codes stored with concept_id 0, per run: no row in mappings/, or a row without "
                               "a verified concept.",
    )
    t["dlm_quality_result"] = sa.Table(
        "dlm_quality_result", metadata,
        _col("run_id", sa.String(36), False, primary_key=True),
        _col("check_name", sa.String(200), False, primary_key=True),
        _col("check_type", sa.String(64), False), _col("table_name", sa.String(64)),
        _col("field_name", sa.String(64)), _col("severity", sa.String(16), False),
        _col("rows_checked", sa.Integer), _col("rows_violated", sa.Integer),
        _col("pct_violated", sa.Float), _col("threshold_pct", sa.Float),
        _col("status", sa.String(8), False, "pass | fail"),
        schema=schema, comment="Result of every quality check of every run (trends over runs).",
    )
    t["dlm_quality_state"] = sa.Table(
        "dlm_quality_state", metadata,
        _col("check_name", sa.String(200), False, primary_key=True),
        _col("fingerprint", sa.String(64), False, "hash of the check's definition, the check code and the global "
                                                  "rows (vocabulary subset) it was counted with"),
        _col("rows_in_domain", sa.BigInteger, False), _col("rows_missing", sa.BigInteger, False),
        _col("rows_checked", sa.BigInteger, False), _col("rows_violated", sa.BigInteger, False),
        _col("run_id", sa.String(36), False, comment="the run that counted it"),
        schema=schema, comment="Each check's counts on the registry as committed, written in the load's "
                               "transaction: an incremental run re-counts only the changed persons' rows.",
    )
    t["dlm_check_scope"] = sa.Table(
        "dlm_check_scope", metadata,
        _col("person_id", sa.BigInteger, False, primary_key=True),
        schema=schema, comment="Work table of an incremental audit (the persons being re-checked); empty "
                               "outside a run's transaction.",
    )
    return t


def staging_tables(metadata: sa.MetaData, schema: str | None = None) -> dict[str, sa.Table]:
    """Raw FHIR as received (de-identified), one row per resource identity."""
    return {
        "fhir_resource": sa.Table(
            "fhir_resource", metadata,
            _col("resource_type", sa.String(64), False, primary_key=True),
            _col("resource_id", sa.String(128), False, primary_key=True),
            _col("version_id", sa.String(64)),
            _col("last_updated", sa.String(40)),
            _col("patient_key", sa.String(64), comment="keyed pseudonym of the patient"),
            _col("sha256", sa.String(64), False, "hash of the original resource text"),
            _col("source", sa.String(500)),
            _col("fetched_at", sa.DateTime, comment="when this version was fetched (UTC)"),
            _col("resource_json", sa.Text, False, "the resource with direct identifiers removed"),
            # Mapping reads staging patient by patient; the hash makes the per-patient digest an index-only read.
            sa.Index("idx_fhir_resource_patient_key", "patient_key", "sha256"),
            schema=schema, comment="Staged FHIR resources of cohort patients, de-identified.",
        )
    }
