//! `pension keys rotate` at the service: every sealed value moves to the current data key while reads and saves go
//! on, and not one read fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use proto::common::{Caller, RotateDataKeyRequest};
use proto::personnel::{CreatePersonRequest, GetPersonRequest, PersonInput};
use tonic::Code;

use crate::helpers::{operator, spawn_personnel_sealing};

const UNIT: &str = "230500001";

/// A valid ID number for person `n` (born 1980–1989, so every one is of working age).
fn id_number(n: u32) -> String {
    validators::id_number::with_check_char(&format!("2305021980{:02}{:02}{:03}", 1 + n % 12, 1 + n % 28, 100 + n % 900))
}

fn staff(n: u32) -> PersonInput {
    PersonInput {
        kind: "staff".into(),
        name: "测试".into(),
        id_type: "01".into(),
        id_number: id_number(n),
        funding_form: "全额拨款".into(),
        work_start: "2005-07-01".into(),
        joined_unit: "2010-03-01".into(),
        personnel_status: "公务员".into(),
        establishment: "编制内".into(),
        accepted_warnings: vec!["population_not_found".into()],
        ..PersonInput::default()
    }
}

fn system() -> Option<Caller> {
    Some(Caller { actor: "cli:test".into(), role: "system".into(), ..Caller::default() })
}

#[tokio::test]
async fn rotation_moves_every_value_to_the_new_key_while_reads_and_saves_go_on() {
    let mut personnel = spawn_personnel_sealing("the-first-key", 1).await;
    let mut client = personnel.client.clone();
    let mut people = Vec::new();
    for n in 0..300 {
        let saved = client
            .create_person(CreatePersonRequest { caller: operator(UNIT), person: Some(staff(n)), ..Default::default() })
            .await
            .expect("saved")
            .into_inner();
        people.push((saved.person.expect("person").person_id, id_number(n)));
    }
    // Every instance gets the new key, and keeps the old one for what it has not sealed again yet.
    personnel
        .restart_with(|config| {
            config.sealing.data_key = Some("the-second-key".to_owned().into());
            config.sealing.data_key_version = 2;
            config.sealing.retired_data_keys.insert("1".into(), "the-first-key".to_owned().into());
        })
        .await;

    let running = Arc::new(AtomicBool::new(true));
    let (reads, failed_reads) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let readers: Vec<_> = (0..4)
        .map(|reader| {
            let (mut client, people, running) = (personnel.client.clone(), people.clone(), running.clone());
            let (reads, failed_reads) = (reads.clone(), failed_reads.clone());
            tokio::spawn(async move {
                let mut n = reader * 71;
                while running.load(Ordering::Relaxed) {
                    let (person_id, expected) = &people[n % people.len()];
                    let answer = client
                        .get_person(GetPersonRequest { caller: operator(UNIT), person_id: person_id.clone() })
                        .await;
                    match answer {
                        Ok(person) if person.get_ref().id_number == *expected => reads.fetch_add(1, Ordering::Relaxed),
                        _ => failed_reads.fetch_add(1, Ordering::Relaxed),
                    };
                    n += 1;
                }
            })
        })
        .collect();
    let writer = {
        let (mut client, running) = (personnel.client.clone(), running.clone());
        tokio::spawn(async move {
            let mut n = 300;
            while running.load(Ordering::Relaxed) && n < 400 {
                let person = Some(staff(n));
                client
                    .create_person(CreatePersonRequest { caller: operator(UNIT), person, ..Default::default() })
                    .await
                    .expect("a save during rotation");
                n += 1;
            }
        })
    };

    let refused =
        client.rotate_data_key(RotateDataKeyRequest { caller: operator(UNIT) }).await.expect_err("not a unit's");
    assert_eq!(refused.code(), Code::PermissionDenied);
    // Counted in reads, not in time, so that a busy machine changes nothing: reads are running when the rotation
    // starts, and go on over the new values after it.
    let read_at_least = |count: u64| {
        let reads = reads.clone();
        async move {
            kit::testing::eventually(Duration::from_secs(30), "reads go on", || {
                let reads = reads.clone();
                async move { reads.load(Ordering::Relaxed) >= count }
            })
            .await;
        }
    };
    read_at_least(20).await;
    let rotated =
        client.rotate_data_key(RotateDataKeyRequest { caller: system() }).await.expect("rotated").into_inner();
    read_at_least(reads.load(Ordering::Relaxed) + 20).await;
    running.store(false, Ordering::Relaxed);
    for task in readers {
        task.await.expect("reader");
    }
    writer.await.expect("writer");

    assert_eq!((rotated.version, rotated.remaining), (2, 0));
    assert_eq!(rotated.resealed, 300, "every value sealed under the first key, and only those");
    assert_eq!(failed_reads.load(Ordering::Relaxed), 0, "no read failed");
    let old: i64 = sqlx::query_scalar("select count(*) from persons where key_version <> 2")
        .fetch_one(&personnel.pool)
        .await
        .expect("count");
    assert_eq!(old, 0);

    // The old key can go: everything opens with the new one alone.
    personnel.restart_with(|config| config.sealing.retired_data_keys.clear()).await;
    let mut client = personnel.client.clone();
    for (person_id, expected) in people.iter().step_by(37) {
        let person = client
            .get_person(GetPersonRequest { caller: operator(UNIT), person_id: person_id.clone() })
            .await
            .expect("opens with the new key alone")
            .into_inner();
        assert_eq!(&person.id_number, expected);
    }
    let audited: i64 = sqlx::query_scalar("select count(*) from kit_audit where action = 'data_key.rotate'")
        .fetch_one(&personnel.pool)
        .await
        .expect("audit");
    assert_eq!(audited, 1);
}
