//! 校验, 保存, 待办业务, editing and deleting people: every rule, error and warning, and who may see what.

use proto::personnel::{
    CheckPersonRequest, CheckReply, CreatePersonRequest, DeletePersonRequest, GetPersonRequest, ListPersonsRequest,
    PersonInput, UpdatePersonRequest,
};
use tonic::Code;

use crate::helpers::{TestPersonnel, operator, spawn_personnel, spawn_personnel_with};

const UNIT: &str = "230500001";

fn staff(name: &str, id_number: &str) -> PersonInput {
    PersonInput {
        kind: "staff".into(),
        name: name.into(),
        id_type: "01".into(),
        id_number: id_number.into(),
        funding_form: "全额拨款".into(),
        ethnicity: "01".into(),
        work_start: "2012-07-01".into(),
        joined_unit: "2015-03-01".into(),
        personnel_status: "公务员".into(),
        establishment: "编制内".into(),
        wage_base: "8200".into(),
        ..PersonInput::default()
    }
}

fn retiree(kind: &str, retirement_date: &str) -> PersonInput {
    PersonInput {
        kind: kind.into(),
        name: "王芳".into(),
        id_type: "01".into(),
        id_number: "11010519491231002X".into(),
        funding_form: "1".into(),
        work_start: "1968-09-01".into(),
        personnel_status: "专业技术人员".into(),
        establishment: "1".into(),
        retirement_date: retirement_date.into(),
        retirement_category: "正常退休".into(),
        monthly_pension: "3650.5".into(),
        pay_start_month: retirement_date[..7].into(),
        pay_bank: "中国工商银行双鸭山分行".into(),
        pay_account: "6222 0216 0201 2345 678".into(),
        ..PersonInput::default()
    }
}

async fn check(personnel: &TestPersonnel, person: PersonInput) -> CheckReply {
    let request = CheckPersonRequest { caller: operator(UNIT), person: Some(person), person_id: String::new() };
    personnel.client.clone().check_person(request).await.expect("checked").into_inner()
}

fn codes(findings: &[proto::personnel::Finding]) -> Vec<(&str, &str)> {
    findings.iter().map(|finding| (finding.field.as_str(), finding.code.as_str())).collect()
}

#[tokio::test]
async fn a_check_reports_every_error_at_once_at_its_field() {
    let personnel = spawn_personnel().await;
    let person = PersonInput {
        id_number: "230502198001011239".into(),
        funding_form: String::new(),
        establishment: "编制外".into(),
        joined_unit: "2001-01-01".into(),
        name: "张3".into(),
        ..staff("张伟", "")
    };

    let reply = check(&personnel, person).await;

    assert!(!reply.ok);
    let found = codes(&reply.errors);
    for expected in [
        ("id_number", "id_number_check_digit"),
        ("funding_form", "required"),
        ("establishment", "not_in_establishment"),
        ("name", "invalid_name"),
    ] {
        assert!(found.contains(&expected), "{expected:?} in {found:?}");
    }
    let joined =
        check(&personnel, PersonInput { joined_unit: "2001-01-01".into(), ..staff("张伟", "230502198001011238") })
            .await;
    assert_eq!(codes(&joined.errors), [("joined_unit", "joined_before_work_start")]);
}

#[tokio::test]
async fn a_check_derives_sex_and_birth_date_and_asks_the_population_registry() {
    let personnel = spawn_personnel().await;

    let known = check(&personnel, staff("李娜", "２３０５０２１９９００２１５２３４４")).await;
    assert!(known.ok && known.warnings.is_empty(), "{known:?}");
    let normalized = known.normalized.expect("normalized");
    assert_eq!(
        (normalized.id_number.as_str(), normalized.sex.as_str(), normalized.birth_date.as_str()),
        ("230502199002152344", "2", "1990-02-15")
    );

    let unknown = check(&personnel, staff("刘强", "230502198503153412")).await;
    assert!(unknown.ok, "公安库不存在该人员 is a warning, not an error");
    assert_eq!(codes(&unknown.warnings), [("id_number", "population_not_found")]);
    let renamed = check(&personnel, staff("李丽", "230502199002152344")).await;
    assert_eq!(codes(&renamed.warnings), [("name", "population_name_mismatch")]);
    let young = check(
        &personnel,
        PersonInput {
            work_start: "1989-01-01".into(),
            joined_unit: "1996-01-01".into(),
            ..staff("李娜", "230502199002152344")
        },
    )
    .await;
    assert!(codes(&young.errors).contains(&("work_start", "work_start_before_birth")));
    let underage =
        check(&personnel, PersonInput { work_start: "2005-01-01".into(), ..staff("李娜", "230502199002152344") }).await;
    assert_eq!(codes(&underage.warnings), [("work_start", "work_start_under_16")]);
    let wage =
        check(&personnel, PersonInput { wage_base: "30000".into(), ..staff("李娜", "230502199002152344") }).await;
    assert_eq!(codes(&wage.warnings), [("wage_base", "wage_base_out_of_range")]);
}

#[tokio::test]
async fn a_save_checks_again_and_stores_only_accepted_warnings_with_who_and_when() {
    let personnel = spawn_personnel().await;
    let mut client = personnel.client.clone();
    let unknown = staff("刘强", "230502198503153412");

    let refused = client
        .create_person(CreatePersonRequest {
            caller: operator(UNIT),
            person: Some(unknown.clone()),
            ..Default::default()
        })
        .await
        .expect_err("the warning is not accepted");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(kit::status::reason(&refused).as_deref(), Some("warnings_not_accepted"));
    assert_eq!(kit::status::violations(&refused)[0].code, "population_not_found");
    let bad = client
        .create_person(CreatePersonRequest {
            caller: operator(UNIT),
            person: Some(PersonInput { establishment: "编制外".into(), ..unknown.clone() }),
            ..Default::default()
        })
        .await
        .expect_err("errors are never saved");
    assert_eq!(bad.code(), Code::InvalidArgument);

    let saved = client
        .create_person(CreatePersonRequest {
            caller: operator(UNIT),
            person: Some(PersonInput { accepted_warnings: vec!["population_not_found".into()], ..unknown }),
            ..Default::default()
        })
        .await
        .expect("saved")
        .into_inner()
        .person
        .expect("person");
    assert_eq!(saved.id_number_masked, "230502********3412");
    assert!(saved.id_number.is_empty(), "a save answers without the clear number");
    assert_eq!((saved.sex_label.as_str(), saved.birth_date.as_str()), ("男", "1985-03-15"));
    let accepted = &saved.accepted_warnings[0];
    assert_eq!((accepted.code.as_str(), accepted.accepted_by.as_str()), ("population_not_found", "230500001-01"));
    let stored: Vec<u8> =
        sqlx::query_scalar("select id_number_sealed from persons").fetch_one(&personnel.pool).await.expect("row");
    assert!(!String::from_utf8_lossy(&stored).contains("230502198503153412"), "the number is sealed at rest");

    let twice = client
        .create_person(CreatePersonRequest {
            caller: operator(UNIT),
            person: Some(staff("刘强", "230502198503153412")),
            ..Default::default()
        })
        .await
        .expect_err("one registration per person and unit");
    assert_eq!(kit::status::violations(&twice)[0].code, "duplicate_in_unit");
    let elsewhere = client
        .check_person(CheckPersonRequest {
            caller: operator("230500002"),
            person: Some(staff("刘强", "230502198503153412")),
            person_id: String::new(),
        })
        .await
        .expect("checked")
        .into_inner();
    assert_eq!(codes(&elsewhere.errors), [("id_number", "insured_elsewhere")]);
    assert!(!elsewhere.errors[0].message.contains(UNIT), "nothing of the other unit is told");
}

#[tokio::test]
async fn the_list_masks_filters_and_pages_and_only_the_unit_sees_its_people() {
    let personnel = spawn_personnel().await;
    let mut client = personnel.client.clone();
    for (name, id) in [("张伟", "230502198001011238"), ("李娜", "230502199002152344")] {
        client
            .create_person(CreatePersonRequest {
                caller: operator(UNIT),
                person: Some(staff(name, id)),
                ..Default::default()
            })
            .await
            .expect("saved");
    }
    client
        .create_person(CreatePersonRequest {
            caller: operator(UNIT),
            person: Some(retiree("retiree_pre_reform", "2009-12-31")),
            ..Default::default()
        })
        .await
        .expect("retiree saved");

    let list = |kind: &str, name: &str, page: u32, page_size: u32| ListPersonsRequest {
        caller: operator(UNIT),
        kind: kind.into(),
        name: name.into(),
        page,
        page_size,
        institution_code: String::new(),
    };
    let all = client.list_persons(list("", "", 1, 2)).await.expect("list").into_inner();
    assert_eq!((all.total, all.persons.len()), (3, 2));
    let second = client.list_persons(list("", "", 2, 2)).await.expect("list").into_inner();
    assert_eq!(second.persons.len(), 1);
    let staff_only = client.list_persons(list("staff", "李", 1, 20)).await.expect("list").into_inner();
    assert_eq!(staff_only.persons.len(), 1);
    let li = &staff_only.persons[0];
    assert_eq!(
        (li.name.as_str(), li.id_number_masked.as_str(), li.population_status.as_str()),
        ("李娜", "230502********2344", "found")
    );

    let other = client
        .list_persons(ListPersonsRequest { caller: operator("230500002"), ..list("", "", 1, 20) })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(other.total, 0);
    let refused = client
        .get_person(GetPersonRequest { caller: operator("230500002"), person_id: li.person_id.clone() })
        .await
        .expect_err("another unit's person");
    assert_eq!(refused.code(), Code::NotFound);
    let full = client
        .get_person(GetPersonRequest { caller: operator(UNIT), person_id: li.person_id.clone() })
        .await
        .expect("own person")
        .into_inner();
    assert_eq!(full.id_number, "230502199002152344");
    let unmasked: i64 = sqlx::query_scalar("select count(*) from kit_audit where action = 'person.unmask'")
        .fetch_one(&personnel.pool)
        .await
        .expect("audit");
    assert_eq!(unmasked, 1);

    // Edit, then delete; the deleted person is gone from 待办业务.
    let edited = client
        .update_person(UpdatePersonRequest {
            caller: operator(UNIT),
            person_id: li.person_id.clone(),
            person: Some(PersonInput { post_rank: "科员".into(), ..staff("李娜", "230502199002152344") }),
        })
        .await
        .expect("edited")
        .into_inner()
        .person
        .expect("person");
    assert_eq!(edited.post_rank, "科员");
    let foreign_edit = client
        .update_person(UpdatePersonRequest {
            caller: operator("230500002"),
            person_id: li.person_id.clone(),
            person: Some(staff("李娜", "230502199002152344")),
        })
        .await
        .expect_err("not theirs");
    assert_eq!(foreign_edit.code(), Code::NotFound);
    client
        .delete_person(DeletePersonRequest { caller: operator(UNIT), person_id: li.person_id.clone() })
        .await
        .expect("deleted");
    let after = client.list_persons(list("staff", "", 1, 20)).await.expect("list").into_inner();
    assert_eq!(after.total, 1);
}

#[tokio::test]
async fn retirees_are_checked_against_the_reform_date_their_age_and_their_pay() {
    let personnel = spawn_personnel().await;

    let pre = check(&personnel, retiree("retiree_pre_reform", "2009-12-31")).await;
    assert!(pre.ok && pre.warnings.is_empty(), "{pre:?}");
    let late = check(&personnel, retiree("retiree_pre_reform", "2014-10-01")).await;
    assert_eq!(codes(&late.errors), [("retirement_date", "retired_after_reform")]);
    let early = check(&personnel, retiree("retiree_post_reform", "2014-09-30")).await;
    assert_eq!(codes(&early.errors), [("retirement_date", "retired_before_reform")]);
    let young = check(&personnel, retiree("retiree_pre_reform", "2001-06-30")).await;
    assert_eq!(codes(&young.warnings), [("retirement_date", "retired_below_normal_age")]);
    let pay = check(
        &personnel,
        PersonInput { pay_start_month: "2009-11".into(), ..retiree("retiree_pre_reform", "2009-12-31") },
    )
    .await;
    assert_eq!(codes(&pay.errors), [("pay_start_month", "pay_before_retirement")]);
    let account = check(
        &personnel,
        PersonInput { pay_account: "6222-ABC".into(), ..retiree("retiree_pre_reform", "2009-12-31") },
    )
    .await;
    assert_eq!(codes(&account.errors), [("pay_account", "invalid_bank_account")]);
    let deceased = check(
        &personnel,
        PersonInput {
            name: "赵老".into(),
            id_number: "440524188001010014".into(),
            work_start: "1900-01-01".into(),
            ..retiree("retiree_pre_reform", "1945-01-01")
        },
    )
    .await;
    assert!(codes(&deceased.errors).contains(&("id_number", "population_deceased")), "{deceased:?}");
}

#[tokio::test]
async fn a_silent_registry_leaves_a_warning_that_needs_no_acceptance_and_a_pending_status() {
    // A port that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://127.0.0.1:{}", silent.local_addr().expect("address").port());
    let personnel = spawn_personnel_with(Some(url)).await;

    let started = std::time::Instant::now();
    let reply = check(&personnel, staff("李娜", "230502199002152344")).await;

    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(codes(&reply.warnings), [("id_number", "population_unavailable")]);
    let saved = personnel
        .client
        .clone()
        .create_person(CreatePersonRequest {
            caller: operator(UNIT),
            person: Some(staff("李娜", "230502199002152344")),
            ..Default::default()
        })
        .await
        .expect("saved without accepting the registry's silence")
        .into_inner()
        .person
        .expect("person");
    assert_eq!(saved.population_status, "pending");
    drop(silent);
}

#[tokio::test]
async fn a_locked_roster_refuses_every_change() {
    let personnel = spawn_personnel().await;
    let mut client = personnel.client.clone();
    let saved = client
        .create_person(CreatePersonRequest {
            caller: operator(UNIT),
            person: Some(staff("张伟", "230502198001011238")),
            ..Default::default()
        })
        .await
        .expect("saved")
        .into_inner()
        .person
        .expect("person");
    sqlx::query("insert into roster_locks (institution_code, declaration_id) values ($1, 'SB1')")
        .bind(UNIT)
        .execute(&personnel.pool)
        .await
        .expect("lock");

    let create = client
        .create_person(CreatePersonRequest {
            caller: operator(UNIT),
            person: Some(staff("李娜", "230502199002152344")),
            ..Default::default()
        })
        .await
        .expect_err("locked");
    let delete = client
        .delete_person(DeletePersonRequest { caller: operator(UNIT), person_id: saved.person_id })
        .await
        .expect_err("locked");
    for status in [create, delete] {
        assert_eq!(kit::status::reason(&status).as_deref(), Some("roster_locked"));
    }
}

fn deemed(unit: &str, from: &str, to: &str, months: &str) -> proto::personnel::DeemedPeriod {
    proto::personnel::DeemedPeriod {
        unit: unit.into(),
        from: from.into(),
        to: to.into(),
        months: months.into(),
        reason: String::new(),
    }
}

#[tokio::test]
async fn deemed_contribution_periods_end_before_the_reform_fit_their_span_and_never_overlap() {
    let personnel = spawn_personnel().await;
    let mut person = staff("李娜", "230502199002152344");
    person.work_start = "2008-07-01".into();
    person.joined_unit = "2015-03-01".into();
    person.deemed_periods = vec![
        deemed("双鸭山市教育局", "2008-07", "2010-06", ""),
        deemed("", "", "", ""),
        deemed("双鸭山市第一中学", "2010-07", "2015-06", ""),
        deemed("宝清县财政局", "2011-01", "2010-12", ""),
        deemed("双鸭山市文化局", "2010-01", "2010-12", "13"),
        deemed("", "2011-01", "2011-13", "x"),
        deemed("集贤县人社局", "2010-03", "2010-05", ""),
    ];

    let reply = check(&personnel, person.clone()).await;

    assert_eq!(
        codes(&reply.errors),
        [
            ("deemed_periods[2].to", "deemed_after_reform"),
            ("deemed_periods[3].to", "ends_before_start"),
            ("deemed_periods[4].months", "months_exceed_span"),
            ("deemed_periods[5].unit", "required"),
            ("deemed_periods[5].to", "invalid_month"),
            ("deemed_periods[5].months", "invalid_months"),
            ("deemed_periods[6].from", "periods_overlap"),
        ],
        "the wholly empty row 2 is ignored"
    );
    assert!(reply.errors[6].message.contains("第7段与第1段"), "{}", reply.errors[6].message);

    person.deemed_periods = vec![
        deemed("双鸭山市教育局", "2006-09", "2010-06", ""),
        deemed("双鸭山市第一中学", "2010-07", "2014-09", "48"),
    ];
    let reply = check(&personnel, person.clone()).await;
    assert!(reply.ok, "{:?}", reply.errors);
    assert!(codes(&reply.warnings).contains(&("deemed_periods[0].from", "deemed_before_work_start")));

    let accepted_warnings = reply.warnings.iter().map(|warning| warning.code.clone()).collect();
    let mut client = personnel.client.clone();
    let saved = client
        .create_person(CreatePersonRequest {
            caller: operator(UNIT),
            person: Some(PersonInput { accepted_warnings, ..person.clone() }),
            ..Default::default()
        })
        .await
        .expect("saved")
        .into_inner()
        .person
        .expect("person");
    let periods: Vec<(&str, &str, &str, &str)> = saved
        .deemed_periods
        .iter()
        .map(|period| (period.unit.as_str(), period.from.as_str(), period.to.as_str(), period.months.as_str()))
        .collect();
    assert_eq!(
        periods,
        [("双鸭山市教育局", "2006-09", "2010-06", "46"), ("双鸭山市第一中学", "2010-07", "2014-09", "48")],
        "an empty count is the whole span"
    );

    let pre_reform = PersonInput {
        deemed_periods: vec![deemed("双鸭山市教育局", "1980-01", "1989-12", "")],
        ..retiree("retiree_pre_reform", "2009-12-31")
    };
    let reply = check(&personnel, pre_reform).await;
    assert_eq!(codes(&reply.errors), [("deemed_periods", "deemed_not_applicable")]);
}
