//! Creates that a client may retry: the Idempotency-Key and the first answer are stored with the create, so a retry
//! never saves a person twice, whether the first answer was lost, is still coming, or the service died in between.

use std::time::Duration;

use prost::Message as _;
use proto::personnel::{CreatePersonRequest, PersonInput, PersonReply};
use tonic::Code;

use crate::helpers::{TestPersonnel, operator, spawn_personnel};

const UNIT: &str = "230500001";

fn person() -> PersonInput {
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

fn create(key: &str, person: PersonInput) -> CreatePersonRequest {
    CreatePersonRequest { caller: operator(UNIT), person: Some(person), idempotency_key: key.into() }
}

fn person_id(reply: &PersonReply) -> String {
    reply.person.as_ref().map(|person| person.person_id.clone()).unwrap_or_default()
}

async fn rows(personnel: &TestPersonnel) -> i64 {
    sqlx::query_scalar("select count(*) from persons").fetch_one(&personnel.pool).await.expect("count")
}

#[tokio::test]
async fn a_retry_with_the_same_key_and_body_gets_the_first_answer_and_saves_nothing_more() {
    let personnel = spawn_personnel().await;
    let mut client = personnel.client.clone();

    let first = client.create_person(create("k-1", person())).await.expect("saved").into_inner();
    let retry = client.create_person(create("k-1", person())).await.expect("the first answer").into_inner();

    assert_eq!(retry, first);
    assert_eq!(rows(&personnel).await, 1);
    let without_key = client.create_person(create("", person())).await.expect_err("a plain second create");
    assert_eq!(kit::status::violations(&without_key)[0].code, "duplicate_in_unit");
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused() {
    let personnel = spawn_personnel().await;
    let mut client = personnel.client.clone();
    client.create_person(create("k-1", person())).await.expect("saved");

    let other = PersonInput { name: "张伟".into(), id_number: "230502198001011238".into(), ..person() };
    let refused = client.create_person(create("k-1", other)).await.expect_err("another body");

    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(kit::status::violations(&refused)[0].code, "idempotency_key_reused");
    assert_eq!(rows(&personnel).await, 1);
    for bad in ["键", &"k".repeat(101), "a key"] {
        let refused = client.create_person(create(bad, person())).await.expect_err("a malformed key");
        assert_eq!(kit::status::violations(&refused)[0].code, "invalid_idempotency_key", "{bad}");
    }
}

#[tokio::test]
async fn retries_sent_while_the_first_is_in_flight_wait_for_it_and_get_its_answer() {
    let personnel = spawn_personnel().await;

    let calls = (0..8).map(|_| {
        let mut client = personnel.client.clone();
        tokio::spawn(async move { client.create_person(create("k-burst", person())).await })
    });
    let answers: Vec<PersonReply> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|joined| joined.expect("task").expect("every retry is answered").into_inner())
        .collect();

    let first = person_id(&answers[0]);
    assert!(!first.is_empty());
    assert!(answers.iter().all(|answer| person_id(answer) == first), "one person, one answer");
    assert_eq!(rows(&personnel).await, 1);
}

#[tokio::test]
async fn a_retry_after_the_service_died_between_commit_and_reply_gets_the_first_answer() {
    let mut personnel = spawn_personnel().await;
    // The first call's reply goes to an inbox nobody reads: the commit happens, the answer is lost, as when the
    // process dies right after committing.
    let subject = personnel.platform.namespace.rpc_subject("personnel", "CreatePerson");
    let lost_inbox = format!("_INBOX.lost.{}", uuid::Uuid::new_v4().simple());
    let request = create("k-crash", person()).encode_to_vec();
    personnel.platform.nats.publish_with_reply(subject, lost_inbox, request.into()).await.expect("sent");
    kit::testing::eventually(Duration::from_secs(10), "the first call committed", || async {
        rows(&personnel).await == 1
    })
    .await;
    personnel.restart().await;

    let retry =
        personnel.client.clone().create_person(create("k-crash", person())).await.expect("answered").into_inner();

    let stored: uuid::Uuid =
        sqlx::query_scalar("select person_id from persons").fetch_one(&personnel.pool).await.expect("row");
    assert_eq!(person_id(&retry), stored.to_string());
    assert_eq!(rows(&personnel).await, 1);
}
