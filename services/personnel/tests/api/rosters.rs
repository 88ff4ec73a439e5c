//! Declared rosters: freezing stores what was saved, every save racing a freeze is either in the snapshot or
//! refused, the snapshot is read masked by the unit and its agency's reviewer and in full only by the platform
//! (audited), and a later declaration lists what changed since an earlier one.

use futures::future::join_all;
use proto::common::Caller;
use proto::personnel::{
    CreatePersonRequest, FreezeRosterRequest, GetRosterSnapshotRequest, PersonInput, ReleaseRosterRequest,
    UpdatePersonRequest,
};
use tonic::Code;

use crate::helpers::{TestPersonnel, operator, spawn_personnel};

const UNIT: &str = "230500031";

fn system() -> Option<Caller> {
    Some(Caller { actor: "230500031-01".into(), role: "system".into(), ..Caller::default() })
}

fn reviewer(agency: &str) -> Option<Caller> {
    Some(Caller {
        actor: "reviewer".into(),
        role: "agency_reviewer".into(),
        agency_code: agency.into(),
        ..Caller::default()
    })
}

/// A valid 18-digit ID number with sequence `n`.
fn id_number(n: u32) -> String {
    validators::id_number::with_check_char(&format!("2305021986{:02}{:02}{:03}", 1 + n % 12, 1 + n % 28, n % 1000))
}

fn staff(name: &str, n: u32) -> PersonInput {
    PersonInput {
        kind: "staff".into(),
        name: name.into(),
        id_type: "01".into(),
        id_number: id_number(n),
        funding_form: "全额拨款".into(),
        work_start: "2010-07-01".into(),
        joined_unit: "2015-03-01".into(),
        personnel_status: "公务员".into(),
        establishment: "编制内".into(),
        accepted_warnings: vec!["population_not_found".into(), "population_name_mismatch".into()],
        ..PersonInput::default()
    }
}

async fn create(personnel: &TestPersonnel, name: &str, n: u32) -> Result<String, tonic::Status> {
    let request =
        CreatePersonRequest { caller: operator(UNIT), person: Some(staff(name, n)), idempotency_key: String::new() };
    let reply = personnel.client.clone().create_person(request).await?.into_inner();
    Ok(reply.person.map(|person| person.person_id).unwrap_or_default())
}

async fn freeze(
    personnel: &TestPersonnel,
    declaration_id: &str,
) -> Result<proto::personnel::RosterSnapshot, tonic::Status> {
    let request = FreezeRosterRequest {
        caller: system(),
        institution_code: UNIT.into(),
        declaration_id: declaration_id.into(),
        ..Default::default()
    };
    personnel.client.clone().freeze_roster(request).await.map(|reply| reply.into_inner())
}

async fn snapshot(
    personnel: &TestPersonnel,
    caller: Option<Caller>,
    declaration_id: &str,
    compare_to: &str,
) -> Result<proto::personnel::RosterSnapshot, tonic::Status> {
    let request = GetRosterSnapshotRequest {
        caller,
        declaration_id: declaration_id.into(),
        compare_to: compare_to.into(),
        summary_only: false,
    };
    personnel.client.clone().get_roster_snapshot(request).await.map(|reply| reply.into_inner())
}

#[tokio::test]
async fn a_frozen_roster_is_read_masked_by_the_unit_and_its_reviewer_and_in_full_only_by_the_platform() {
    let personnel = spawn_personnel().await;
    let first = create(&personnel, "张伟", 1).await.expect("saved");
    create(&personnel, "李娜", 2).await.expect("saved");
    let declaration = uuid::Uuid::now_v7().to_string();

    let operator_freezing = personnel
        .client
        .clone()
        .freeze_roster(FreezeRosterRequest {
            caller: operator(UNIT),
            institution_code: UNIT.into(),
            declaration_id: declaration.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(operator_freezing.expect_err("platform only").code(), Code::PermissionDenied);
    let frozen = freeze(&personnel, &declaration).await.expect("frozen");
    assert_eq!((frozen.staff_count, frozen.digest.len()), (2, 64));
    assert_eq!(freeze(&personnel, &declaration).await.expect("again").digest, frozen.digest, "idempotent");
    assert_eq!(
        freeze(&personnel, &uuid::Uuid::now_v7().to_string()).await.map(|_| ()).expect_err("held").code(),
        Code::FailedPrecondition
    );

    let as_unit = snapshot(&personnel, operator(UNIT), &declaration, "").await.expect("the unit reads it");
    assert_eq!(as_unit.persons.len(), 2);
    assert!(as_unit.persons.iter().all(|p| p.id_number.is_empty() && p.id_number_masked.contains("********")));
    let as_platform = snapshot(&personnel, system(), &declaration, "").await.expect("printing reads it");
    assert!(as_platform.persons.iter().any(|p| p.id_number == id_number(1)));
    let unmasked: i64 =
        sqlx::query_scalar("select count(*) from kit_audit where action = 'roster.unmask' and object = $1")
            .bind(format!("declaration:{declaration}"))
            .fetch_one(&personnel.pool)
            .await
            .expect("audit");
    assert_eq!(unmasked, 1);
    assert_eq!(
        snapshot(&personnel, operator("230500099"), &declaration, "").await.expect_err("not theirs").code(),
        Code::NotFound
    );
    assert_eq!(
        snapshot(&personnel, reviewer("230500"), &declaration, "").await.expect_err("agency unknown").code(),
        Code::NotFound
    );
    sqlx::query("insert into unit_agencies (institution_code, agency_code) values ($1, '230500')")
        .bind(UNIT)
        .execute(&personnel.pool)
        .await
        .expect("agency");
    assert_eq!(snapshot(&personnel, reviewer("230500"), &declaration, "").await.expect("its agency").persons.len(), 2);
    assert_eq!(
        snapshot(&personnel, reviewer("230100"), &declaration, "").await.expect_err("other").code(),
        Code::NotFound
    );

    // Released, changed and frozen again: the second snapshot lists what changed, the first is as it was.
    let release =
        ReleaseRosterRequest { caller: system(), institution_code: UNIT.into(), declaration_id: declaration.clone() };
    assert!(personnel.client.clone().release_roster(release.clone()).await.expect("released").into_inner().released);
    assert!(!personnel.client.clone().release_roster(release).await.expect("again").into_inner().released);
    let update = UpdatePersonRequest {
        caller: operator(UNIT),
        person_id: first.clone(),
        person: Some(PersonInput { phone: "13804691234".into(), ..staff("张伟", 1) }),
    };
    personnel.client.clone().update_person(update).await.expect("updated");
    create(&personnel, "王芳", 3).await.expect("saved");
    let later = uuid::Uuid::now_v7().to_string();
    let second = freeze(&personnel, &later).await.expect("frozen again");
    assert_ne!(second.digest, frozen.digest);
    let compared = snapshot(&personnel, operator(UNIT), &later, &declaration).await.expect("compared");
    let mut changes: Vec<(String, String, Vec<String>)> =
        compared.changes.into_iter().map(|c| (c.name, c.change, c.fields)).collect();
    changes.sort();
    assert_eq!(
        changes,
        vec![
            ("张伟".to_owned(), "changed".to_owned(), vec!["联系电话".to_owned()]),
            ("王芳".to_owned(), "added".to_owned(), vec![]),
        ]
    );
    let unchanged = sqlx::query("update roster_snapshots set digest = 'x'").execute(&personnel.pool).await;
    assert!(unchanged.is_err(), "snapshots cannot be changed");
}

#[tokio::test]
async fn every_save_racing_a_freeze_is_in_the_snapshot_or_refused() {
    let personnel = spawn_personnel().await;
    create(&personnel, "张伟", 100).await.expect("saved");
    let declaration = uuid::Uuid::now_v7().to_string();
    let names = ["甲", "乙", "丙", "丁", "戊", "己", "庚", "辛", "壬", "癸"];
    let saves = join_all((0..20u32).map(|n| {
        let personnel = &personnel;
        let name = format!("人员{}{}", names[n as usize % 10], names[n as usize / 10]);
        async move { create(personnel, &name, 200 + n).await }
    }));
    let (saves, frozen) = tokio::join!(saves, async {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        freeze(&personnel, &declaration).await
    });
    let frozen = frozen.expect("frozen");
    let in_snapshot = snapshot(&personnel, operator(UNIT), &declaration, "").await.expect("read");
    for save in &saves {
        match save {
            Ok(person_id) => {
                assert!(in_snapshot.persons.iter().any(|p| &p.person_id == person_id), "a saved person is frozen too")
            }
            Err(status) => assert_eq!(kit::status::reason(status).as_deref(), Some("roster_locked")),
        }
    }
    let saved = saves.iter().filter(|save| save.is_ok()).count();
    assert_eq!(frozen.staff_count as usize, saved + 1);
}
