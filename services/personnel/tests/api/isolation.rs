//! The rules that make the registry trustworthy province-wide: one insured unit per person however many units save
//! at once, and each unit's people out of every other unit's reach, in the service and again in PostgreSQL.

use std::sync::Arc;

use proto::personnel::{
    CheckPersonRequest, CreatePersonRequest, DeletePersonRequest, GetPersonRequest, ListPersonsRequest, PersonInput,
    UpdatePersonRequest,
};
use tonic::Code;

use crate::helpers::{TestPersonnel, operator, spawn_personnel};

fn staff(name: &str, id_number: &str) -> PersonInput {
    PersonInput {
        kind: "staff".into(),
        name: name.into(),
        id_type: "01".into(),
        id_number: id_number.into(),
        funding_form: "全额拨款".into(),
        work_start: "2012-07-01".into(),
        joined_unit: "2015-03-01".into(),
        personnel_status: "公务员".into(),
        establishment: "编制内".into(),
        ..PersonInput::default()
    }
}

async fn agency_handles(personnel: &TestPersonnel, unit: &str, agency: (&str, &str)) {
    sqlx::query("insert into unit_agencies values ($1, $2, $3)")
        .bind(unit)
        .bind(agency.0)
        .bind(agency.1)
        .execute(&personnel.pool)
        .await
        .expect("the unit's agency");
}

#[tokio::test]
async fn a_hundred_units_saving_one_person_at_once_insure_the_person_in_exactly_one() {
    let personnel = Arc::new(spawn_personnel().await);
    let units: Vec<String> = (1..=100).map(|n| format!("2305{n:05}")).collect();
    for unit in &units {
        agency_handles(&personnel, unit, ("230521", "集贤县社会保险事业中心")).await;
    }

    let saves = units.iter().map(|unit| {
        let mut client = personnel.client.clone();
        let unit = unit.clone();
        tokio::spawn(async move {
            client
                .create_person(CreatePersonRequest {
                    caller: operator(&unit),
                    person: Some(staff("李娜", "230502199002152344")),
                    ..Default::default()
                })
                .await
        })
    });
    let answers: Vec<_> =
        futures::future::join_all(saves).await.into_iter().map(|joined| joined.expect("task")).collect();

    let saved = answers.iter().filter(|answer| answer.is_ok()).count();
    assert_eq!(
        saved,
        1,
        "exactly one unit insures the person: {:?}",
        answers.iter().find_map(|answer| answer.as_ref().err())
    );
    for refused in answers.iter().filter_map(|answer| answer.as_ref().err()) {
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        let violation = &kit::status::violations(refused)[0];
        assert_eq!((violation.field.as_str(), violation.code.as_str()), ("id_number", "insured_elsewhere"));
        assert!(
            violation.message.contains("集贤县社会保险事业中心"),
            "names the agency to contact: {}",
            violation.message
        );
        assert!(!units.iter().any(|unit| violation.message.contains(unit.as_str())), "and nothing of the other unit");
    }
    let rows: i64 = sqlx::query_scalar("select count(*) from persons").fetch_one(&personnel.pool).await.expect("count");
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn row_level_security_holds_for_the_application_role_without_the_services_filter() {
    let personnel = spawn_personnel().await;
    let mut client = personnel.client.clone();
    for (unit, name, id) in [("230500001", "张伟", "230502198001011238"), ("230500002", "李娜", "230502199002152344")]
    {
        client
            .create_person(CreatePersonRequest {
                caller: operator(unit),
                person: Some(staff(name, id)),
                ..Default::default()
            })
            .await
            .expect("saved");
    }
    let count_as_application = |scope: Option<kit::db::Scope>| {
        let pool = personnel.pool.clone();
        async move {
            let mut transaction = pool.begin().await.expect("begin");
            sqlx::query("set local role pension_app").execute(&mut *transaction).await.expect("role");
            if let Some(scope) = scope {
                kit::db::set_scope(&mut transaction, &scope).await.expect("scope");
            }
            // No `where institution_code = …`: only the policy stands between the query and the other unit.
            let names: Vec<String> = sqlx::query_scalar("select name from persons order by name")
                .fetch_all(&mut *transaction)
                .await
                .expect("select");
            names
        }
    };

    assert!(count_as_application(None).await.is_empty(), "no scope, no rows");
    assert_eq!(count_as_application(Some(kit::db::Scope::unit("230500001"))).await, ["张伟"]);
    assert_eq!(
        count_as_application(Some(kit::db::Scope::Units(vec!["230500001".into(), "230500002".into()]))).await.len(),
        2,
        "one transaction may carry a batch of several units"
    );
    assert_eq!(count_as_application(Some(kit::db::Scope::All)).await.len(), 2);

    let mut transaction = personnel.pool.begin().await.expect("begin");
    sqlx::query("set local role pension_app").execute(&mut *transaction).await.expect("role");
    kit::db::set_scope(&mut transaction, &kit::db::Scope::unit("230500001")).await.expect("scope");
    let moved = sqlx::query("update persons set institution_code = '230500001' where name = '李娜'")
        .execute(&mut *transaction)
        .await
        .expect("an update it cannot see");
    assert_eq!(moved.rows_affected(), 0, "another unit's row is not even found");
    let forged = sqlx::query("update persons set institution_code = '230500002' where name = '张伟'")
        .execute(&mut *transaction)
        .await;
    assert!(forged.is_err(), "and no row can be written into a unit outside the scope");
}

#[tokio::test]
async fn a_unit_reaches_nothing_of_another_units_people_by_id_filter_or_guess() {
    let personnel = spawn_personnel().await;
    let mut client = personnel.client.clone();
    let (owner, intruder) = ("230500001", "230500002");
    let person = client
        .create_person(CreatePersonRequest {
            caller: operator(owner),
            person: Some(staff("李娜", "230502199002152344")),
            ..Default::default()
        })
        .await
        .expect("saved")
        .into_inner()
        .person
        .expect("person");
    client
        .create_person(CreatePersonRequest {
            caller: operator(intruder),
            person: Some(staff("张伟", "230502198001011238")),
            ..Default::default()
        })
        .await
        .expect("saved");

    let get =
        client.get_person(GetPersonRequest { caller: operator(intruder), person_id: person.person_id.clone() }).await;
    assert_eq!(get.expect_err("by id").code(), Code::NotFound);
    let update = client
        .update_person(UpdatePersonRequest {
            caller: operator(intruder),
            person_id: person.person_id.clone(),
            person: Some(staff("李娜", "230502199002152344")),
        })
        .await;
    assert_eq!(update.expect_err("edit by id").code(), Code::NotFound);
    let delete = client
        .delete_person(DeletePersonRequest { caller: operator(intruder), person_id: person.person_id.clone() })
        .await;
    assert_eq!(delete.expect_err("delete by id").code(), Code::NotFound);
    let list = client
        .list_persons(ListPersonsRequest {
            caller: operator(intruder),
            institution_code: owner.into(),
            name: "李".into(),
            ..ListPersonsRequest::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.total, 0, "naming the other unit in the filter changes nothing");
    let checked = client
        .check_person(CheckPersonRequest {
            caller: operator(intruder),
            person: Some(staff("李娜", "230502199002152344")),
            person_id: person.person_id.clone(),
        })
        .await
        .expect("checked")
        .into_inner();
    assert!(
        checked.errors.iter().any(|error| error.code == "insured_elsewhere"),
        "excluding another unit's person from the duplicate check is not possible"
    );
    for guess in [uuid::Uuid::now_v7(), uuid::Uuid::nil(), uuid::Uuid::max()] {
        let answer =
            client.get_person(GetPersonRequest { caller: operator(intruder), person_id: guess.to_string() }).await;
        assert_eq!(answer.expect_err("a guessed id").code(), Code::NotFound);
    }
    for malformed in ["", "1", "' or 1=1 --", "../230500001"] {
        let answer =
            client.get_person(GetPersonRequest { caller: operator(intruder), person_id: malformed.into() }).await;
        assert_eq!(answer.expect_err("a malformed id").code(), Code::NotFound);
    }
    let still: i64 = sqlx::query_scalar("select count(*) from persons where institution_code = $1")
        .bind(owner)
        .fetch_one(&personnel.pool)
        .await
        .expect("count");
    assert_eq!(still, 1, "the owner's person is untouched");
}
