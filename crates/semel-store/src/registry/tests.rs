//! The embedded registry's own cases (the shared ones are the conformance suite's).

#[test]
fn authorisations_keep_every_version_and_refuse_a_stale_write() {
    use semel_core::{
        Authorisation, AuthorisationRef, AuthorisationStatus, DatasetName, FieldName, Kbo,
        PurposeCode,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = crate::Store::open(dir.path()).expect("open");
    let reg = store.registry();
    let mut a = Authorisation {
        reference: AuthorisationRef::new("BSC/2024/017").expect("ref"),
        consumer: Kbo::parse("0212345668").expect("kbo"),
        dataset: DatasetName::new("national_register.residence").expect("dataset"),
        fields: [FieldName::new("street").expect("field")]
            .into_iter()
            .collect(),
        purpose: PurposeCode::new("RIS_ELIGIBILITY").expect("purpose"),
        legal_basis: "test".into(),
        issuing_body: "test".into(),
        valid_from: time::Date::MIN,
        valid_until: None,
        status: AuthorisationStatus::Active,
        version: 1,
        updated_at: time::OffsetDateTime::UNIX_EPOCH,
        confidential_until: None,
        check_fields: Default::default(),
        checks: Vec::new(),
        capacities: Default::default(),
        consent_required: false,
        receives_mutations: false,
    };
    reg.put_authorisation(&a).expect("version 1");
    a.status = AuthorisationStatus::Suspended;
    a.version = 2;
    reg.put_authorisation(&a).expect("version 2");
    assert!(
        matches!(
            reg.put_authorisation(&a),
            Err(crate::StoreError::Conflict(_))
        ),
        "version 2 again is stale"
    );
    let history = reg.authorisation_history("BSC/2024/017").expect("history");
    assert_eq!(
        history
            .iter()
            .map(|v| (v.version, v.status))
            .collect::<Vec<_>>(),
        vec![
            (1, AuthorisationStatus::Active),
            (2, AuthorisationStatus::Suspended)
        ]
    );
}

#[test]
fn sled_keeps_its_data_in_a_file_named_db() {
    // Registry::sync fsyncs `<db>/db` by name: this test fails if a sled
    // upgrade moves its data elsewhere.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = crate::Store::open(dir.path()).expect("open");
    store.registry().sync().expect("sync");
    assert!(dir.path().join("db/db").is_file());
}
