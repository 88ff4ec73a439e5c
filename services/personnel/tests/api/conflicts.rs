//! Stale registrations: the unit that cannot register a person is told which agency to contact; that agency's
//! reviewer, and no other, sees the conflict and ends the stale registration with a reason; the unit's save then
//! goes through, and the person's history across units shows it all.

use proto::common::Caller;
use proto::personnel::{
    CreatePersonRequest, EndRegistrationRequest, GetPersonHistoryRequest, ListRegistrationConflictsRequest, PersonInput,
};
use tonic::Code;

use crate::helpers::{TestPersonnel, operator, spawn_personnel};

const OLD_UNIT: &str = "230500051";
const NEW_UNIT: &str = "230100052";

fn li_na() -> PersonInput {
    PersonInput {
        kind: "staff".into(),
        name: "李娜".into(),
        id_type: "01".into(),
        id_number: "230502199002152344".into(),
        funding_form: "全额拨款".into(),
        work_start: "2012-07-01".into(),
        joined_unit: "2015-03-01".into(),
        personnel_status: "公务员".into(),
        establishment: "编制内".into(),
        ..PersonInput::default()
    }
}

fn reviewer(agency: &str) -> Option<Caller> {
    Some(Caller {
        actor: format!("reviewer.{agency}"),
        role: "agency_reviewer".into(),
        agency_code: agency.into(),
        ..Caller::default()
    })
}

async fn create(personnel: &TestPersonnel, unit: &str) -> Result<String, tonic::Status> {
    let request = CreatePersonRequest { caller: operator(unit), person: Some(li_na()), idempotency_key: String::new() };
    let reply = personnel.client.clone().create_person(request).await?.into_inner();
    Ok(reply.person.map(|person| person.person_id).unwrap_or_default())
}

#[tokio::test]
async fn the_holding_agency_ends_a_stale_registration_and_the_new_unit_registers_the_person() {
    let personnel = spawn_personnel().await;
    for (unit, agency, name) in
        [(OLD_UNIT, "230500", "双鸭山市社会保险事业中心"), (NEW_UNIT, "230100", "哈尔滨市社会保险事业中心")]
    {
        sqlx::query("insert into unit_agencies values ($1, $2, $3)")
            .bind(unit)
            .bind(agency)
            .bind(name)
            .execute(&personnel.pool)
            .await
            .expect("agency");
    }
    let old_id = create(&personnel, OLD_UNIT).await.expect("registered in the old unit");

    let refused = create(&personnel, NEW_UNIT).await.expect_err("insured elsewhere");
    assert!(refused.message().contains("双鸭山市社会保险事业中心"), "{}", refused.message());
    assert!(!refused.message().contains(OLD_UNIT), "nothing of the other unit");
    // Asking again records no second conflict.
    create(&personnel, NEW_UNIT).await.expect_err("still insured elsewhere");

    let list = |caller: Option<Caller>| {
        let mut client = personnel.client.clone();
        async move { client.list_registration_conflicts(ListRegistrationConflictsRequest { caller }).await }
    };
    assert!(list(reviewer("230100")).await.expect("listed").into_inner().conflicts.is_empty(), "not its agency's");
    assert_eq!(list(operator(NEW_UNIT)).await.expect_err("units do not").code(), Code::PermissionDenied);
    let conflicts = list(reviewer("230500")).await.expect("listed").into_inner().conflicts;
    assert_eq!(conflicts.len(), 1);
    let conflict = &conflicts[0];
    assert_eq!(
        (conflict.id_number_masked.as_str(), conflict.requesting_unit.as_str(), conflict.holding_unit.as_str()),
        ("230502********2344", NEW_UNIT, OLD_UNIT)
    );

    let end = |caller: Option<Caller>, reason: &str| {
        let mut client = personnel.client.clone();
        let request =
            EndRegistrationRequest { caller, conflict_id: conflict.conflict_id.clone(), reason: reason.into() };
        async move { client.end_registration(request).await }
    };
    assert_eq!(end(reviewer("230100"), "调出").await.expect_err("not its agency").code(), Code::NotFound);
    assert_eq!(end(reviewer("230500"), " ").await.expect_err("a reason").code(), Code::InvalidArgument);
    let ended = end(reviewer("230500"), "已调往哈尔滨市工作").await.expect("ended").into_inner();
    assert_eq!((ended.resolution.as_str(), ended.resolved_by.as_str()), ("ended", "reviewer.230500"));
    assert_eq!(end(reviewer("230500"), "again").await.expect_err("once").code(), Code::FailedPrecondition);

    let new_id = create(&personnel, NEW_UNIT).await.expect("the new unit registers the person now");
    // The old unit's list no longer shows the person, nor can it open the ended registration.
    let old_list = personnel
        .client
        .clone()
        .list_persons(proto::personnel::ListPersonsRequest { caller: operator(OLD_UNIT), ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(old_list.total, 0);
    let opened = personnel
        .client
        .clone()
        .get_person(proto::personnel::GetPersonRequest { caller: operator(OLD_UNIT), person_id: old_id.clone() })
        .await;
    assert_eq!(opened.expect_err("ended").code(), Code::NotFound);
    let history = personnel
        .client
        .clone()
        .get_person_history(GetPersonHistoryRequest { caller: reviewer("230100"), person_id: new_id.clone() })
        .await
        .expect("history")
        .into_inner();
    let entries: Vec<(String, String, String)> =
        history.entries.into_iter().map(|e| (e.person_id, e.institution_code, e.event)).collect();
    assert_eq!(
        entries,
        vec![
            (old_id.clone(), OLD_UNIT.to_owned(), "registered".to_owned()),
            (old_id.clone(), OLD_UNIT.to_owned(), "ended".to_owned()),
            (new_id, NEW_UNIT.to_owned(), "registered".to_owned()),
        ]
    );
    let history_by_unit = personnel
        .client
        .clone()
        .get_person_history(GetPersonHistoryRequest { caller: operator(NEW_UNIT), person_id: old_id.clone() })
        .await;
    assert_eq!(history_by_unit.expect_err("reviewers only").code(), Code::PermissionDenied);

    let (events, audits): (i64, i64) = sqlx::query_as(
        "select (select count(*) from kit_outbox where subject like '%person_registration_ended'), \
         (select count(*) from kit_audit where action = 'person.end_registration')",
    )
    .fetch_one(&personnel.pool)
    .await
    .expect("counts");
    assert_eq!((events, audits), (1, 1));
}
