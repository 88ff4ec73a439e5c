//! Life after approval across units and personnel: each kind of change (增员, 减员, 变更, retirement) through the
//! declaration cycle and applied on approval, a person moving between units of different agencies by two change
//! declarations, and random sequences of actions on change declarations checked against the rules of the first.

use proto::common::Caller;
use proto::personnel::{
    CreatePersonRequest, DeleteRosterChangeRequest, GetPersonHistoryRequest, ListPersonsRequest,
    ListRosterChangesRequest, PersonInput, RosterChangeItem, SaveRosterChangeRequest,
};
use proto::units::{Declaration, DeclareRequest, GetDeclarationRequest, UnitRecordInput, UpdateUnitRecordRequest};
use tonic::Code;

use crate::declarations::{
    AGENCY, OTHER_AGENCY, Saga, code_of, id_number, patient_reconciler, person_name, record, reviewer, saga,
    staff_member,
};
use crate::helpers::operator;

const POPULATION_UNAVAILABLE: &str = "population_unavailable";

impl Saga {
    /// A unit of `agency` with a complete record and the given staff, declared and approved by the agency.
    async fn enrolled_unit(&self, unit: &str, agency: &str, people: &[(&str, String)]) -> Declaration {
        self.units.draft(unit, agency).await;
        sqlx::query("insert into unit_agencies (institution_code, agency_code, agency_name) values ($1, $2, $3)")
            .bind(unit)
            .bind(agency)
            .bind(format!("经办机构{agency}"))
            .execute(&self.personnel.pool)
            .await
            .expect("agency known to personnel");
        let record = UnitRecordInput { bank_account_name: "测试单位".into(), ..record() };
        let request = UpdateUnitRecordRequest { caller: operator(unit), record: Some(record) };
        self.units.client.clone().update_unit_record(request).await.expect("record saved");
        for (name, number) in people {
            self.add_person(unit, name, number).await.expect("person saved");
        }
        let declared = self.declare(unit).await.expect("declared");
        self.claim(reviewer(agency), &declared.declaration_id).await.expect("claimed");
        self.approve(reviewer(agency), &declared.declaration_id).await.expect("approved")
    }

    async fn save_change(
        &self,
        unit: &str,
        request: SaveRosterChangeRequest,
    ) -> Result<RosterChangeItem, tonic::Status> {
        let request = SaveRosterChangeRequest { caller: operator(unit), ..request };
        self.personnel.client.clone().save_roster_change(request).await.map(|reply| reply.into_inner())
    }

    async fn open_changes(&self, unit: &str) -> Vec<RosterChangeItem> {
        let request = ListRosterChangesRequest { caller: operator(unit) };
        self.personnel.client.clone().list_roster_changes(request).await.expect("changes").into_inner().items
    }

    async fn declare_changes(&self, unit: &str) -> Result<Declaration, tonic::Status> {
        let request = DeclareRequest { caller: operator(unit), kind: "change".into() };
        self.units.client.clone().declare(request).await.map(|reply| reply.into_inner())
    }

    async fn person_id(&self, unit: &str, name: &str) -> String {
        sqlx::query_scalar(
            "select person_id::text from persons where institution_code = $1 and name = $2 and ended_at is null",
        )
        .bind(unit)
        .bind(name)
        .fetch_one(&self.personnel.pool)
        .await
        .expect("person")
    }

    /// (kind, phone, retirement date, ended, pending add) of a person as stored.
    async fn stored(&self, person_id: &str) -> (String, Option<String>, Option<String>, bool, bool) {
        sqlx::query_as(
            "select kind, phone, retirement_date::text, ended_at is not null, pending_add from persons \
             where person_id = $1::uuid",
        )
        .bind(person_id)
        .fetch_one(&self.personnel.pool)
        .await
        .expect("stored person")
    }

    /// The roster as 待办业务 lists it: approved people only.
    async fn listed(&self, unit: &str) -> Vec<String> {
        let request = ListPersonsRequest { caller: operator(unit), page_size: 100, ..Default::default() };
        let reply = self.personnel.client.clone().list_persons(request).await.expect("list").into_inner();
        let mut names: Vec<String> = reply.persons.into_iter().map(|person| person.name).collect();
        names.sort();
        names
    }

    async fn history(&self, person_id: &str) -> Vec<(String, String, String)> {
        let request = GetPersonHistoryRequest { caller: reviewer(AGENCY), person_id: person_id.into() };
        let reply = self.personnel.client.clone().get_person_history(request).await.expect("history").into_inner();
        reply.entries.into_iter().map(|entry| (entry.institution_code, entry.event, entry.declaration_id)).collect()
    }
}

fn accepted(person: PersonInput, codes: &[&str]) -> PersonInput {
    PersonInput { accepted_warnings: codes.iter().map(|code| (*code).to_owned()).collect(), ..person }
}

fn add(person: PersonInput) -> SaveRosterChangeRequest {
    SaveRosterChangeRequest { action: "add".into(), person: Some(person), ..Default::default() }
}

fn remove(person_id: &str, date: &str, reason: &str, retiree: Option<PersonInput>) -> SaveRosterChangeRequest {
    SaveRosterChangeRequest {
        action: "remove".into(),
        person_id: person_id.into(),
        person: retiree,
        leave_date: date.into(),
        leave_reason: reason.into(),
        ..Default::default()
    }
}

fn update(person_id: &str, person: PersonInput) -> SaveRosterChangeRequest {
    SaveRosterChangeRequest {
        action: "update".into(),
        person_id: person_id.into(),
        person: Some(person),
        ..Default::default()
    }
}

fn retiree_fields() -> PersonInput {
    PersonInput {
        retirement_category: "正常退休".into(),
        monthly_pension: "4200".into(),
        pay_start_month: "2026-12".into(),
        pay_bank: "中国工商银行双鸭山分行".into(),
        pay_account: "6222020907001234567".into(),
        ..PersonInput::default()
    }
}

#[tokio::test]
async fn each_kind_of_change_goes_through_the_declaration_cycle_and_approval_applies_it() {
    let saga = saga(patient_reconciler).await;
    let unit = "230500101";
    let people = [("赵一", id_number(101)), ("钱二", id_number(102)), ("孙三", id_number(103))];
    let first = saga.enrolled_unit(unit, AGENCY, &people).await;
    assert_eq!(first.kind, "initial");
    assert!(saga.enrolled(unit).await, "approval enrolls the roster");
    assert_eq!(saga.roster_lock(unit).await, None, "and releases the first declaration's lock");

    // Approved people change only through change declarations now.
    let direct = saga.add_person(unit, "李四", &id_number(104)).await;
    assert_eq!(code_of(direct), (Code::FailedPrecondition, "roster_enrolled".into()));
    let nothing = saga.declare_changes(unit).await;
    assert_eq!(code_of(nothing), (Code::FailedPrecondition, "no_changes".into()));

    // 增员, 变更, 减员 (调出) and 减员 (退休), each checked with the rules of a person.
    let newcomer = accepted(staff_member("李四", &id_number(104)), &[POPULATION_UNAVAILABLE]);
    let added = saga.save_change(unit, add(newcomer)).await.expect("增员 saved");
    assert_eq!((added.action.as_str(), added.action_label.as_str()), ("add", "增员"));
    let zhao = saga.person_id(unit, "赵一").await;
    let unchanged = saga
        .save_change(unit, update(&zhao, accepted(staff_member("赵一", &id_number(101)), &[POPULATION_UNAVAILABLE])))
        .await;
    assert_eq!(code_of(unchanged), (Code::InvalidArgument, "nothing_changed".into()));
    let corrected =
        PersonInput {
            phone: "13904691111".into(), post_rank: "科员".into(), ..staff_member("赵一", &id_number(101))
        };
    let updated = saga
        .save_change(unit, update(&zhao, accepted(corrected, &[POPULATION_UNAVAILABLE])))
        .await
        .expect("变更 saved");
    let fields: Vec<&str> = updated.fields.iter().map(|diff| diff.field.as_str()).collect();
    assert_eq!(fields, ["post_rank", "phone"], "a 变更 holds only what changed");
    let other_number = PersonInput { ..staff_member("赵一", &id_number(109)) };
    let renumbered = saga.save_change(unit, update(&zhao, accepted(other_number, &[POPULATION_UNAVAILABLE]))).await;
    assert_eq!(code_of(renumbered), (Code::InvalidArgument, "id_unchanged".into()));
    let qian = saga.person_id(unit, "钱二").await;
    let future = saga.save_change(unit, remove(&qian, "2999-01-01", "transfer", None)).await;
    assert_eq!(code_of(future), (Code::InvalidArgument, "in_future".into()));
    let unknown = saga.save_change(unit, remove(&qian, "2026-11-30", "出国", None)).await;
    assert_eq!(code_of(unknown), (Code::InvalidArgument, "unknown_code".into()));
    saga.save_change(unit, remove(&qian, "2026-11-30", "调出", None)).await.expect("减员 saved by the reason's label");
    let sun = saga
        .save_change(
            unit,
            remove(&saga.person_id(unit, "孙三").await, "2026-11-30", "retirement", Some(retiree_fields())),
        )
        .await;
    // Born in 1985, retiring at 41: the rules of a retiree warn, and the warning must be accepted.
    let status = sun.expect_err("warnings first");
    assert_eq!(kit::status::reason(&status).as_deref(), Some("warnings_not_accepted"));
    let retiree = accepted(retiree_fields(), &["retired_below_normal_age", POPULATION_UNAVAILABLE]);
    let sun_id = saga.person_id(unit, "孙三").await;
    let retired =
        saga.save_change(unit, remove(&sun_id, "2026-11-30", "retirement", Some(retiree))).await.expect("退休 saved");
    assert_eq!((retired.kind.as_str(), retired.new_kind.as_str()), ("staff", "retiree_post_reform"));
    assert_eq!(saga.open_changes(unit).await.len(), 4);
    let li_id = added.person_id.clone();
    assert!(saga.stored(&li_id).await.4, "an 增员 waits outside the approved roster");
    assert_eq!(saga.listed(unit).await, ["孙三", "赵一", "钱二"]);

    // Declared: frozen, withdrawn, declared again, rejected, declared again, approved.
    let declared = saga.declare_changes(unit).await.expect("change declared");
    assert_eq!((declared.kind.as_str(), declared.state.as_str()), ("change", "declared"));
    assert_eq!((declared.add_count, declared.remove_count, declared.update_count), (1, 2, 1));
    assert_eq!(saga.unit_state(unit).await, "approved", "the unit stays approved throughout");
    let locked = saga.save_change(unit, remove(&zhao, "2026-11-30", "death", None)).await;
    assert_eq!(code_of(locked), (Code::FailedPrecondition, "changes_locked".into()));
    let twice = saga.declare_changes(unit).await;
    assert_eq!(code_of(twice), (Code::FailedPrecondition, "already_declared".into()));
    saga.withdraw(unit).await.expect("withdrawn");
    assert_eq!(saga.roster_lock(unit).await, None);
    let dropped = saga.save_change(unit, remove(&zhao, "2026-11-30", "death", None)).await.expect("editable again");
    saga.personnel
        .client
        .clone()
        .delete_roster_change(DeleteRosterChangeRequest { caller: operator(unit), change_id: dropped.change_id })
        .await
        .expect("dropped");
    saga.save_change(
        unit,
        update(
            &zhao,
            accepted(
                PersonInput {
                    phone: "13904691111".into(),
                    post_rank: "科员".into(),
                    ..staff_member("赵一", &id_number(101))
                },
                &[POPULATION_UNAVAILABLE],
            ),
        ),
    )
    .await
    .expect("变更 again");
    let again = saga.declare_changes(unit).await.expect("declared again");
    saga.claim(reviewer(AGENCY), &again.declaration_id).await.expect("claimed");
    let rejected = saga.reject(reviewer(AGENCY), &again.declaration_id, "减员材料不全").await.expect("rejected");
    assert_eq!(rejected.state, "rejected");
    assert_eq!(saga.open_changes(unit).await.len(), 4, "a rejection keeps the changes for the unit to fix");
    let last = saga.declare_changes(unit).await.expect("declared a third time");
    saga.claim(reviewer(AGENCY), &last.declaration_id).await.expect("claimed");
    let approved = saga.approve(reviewer(AGENCY), &last.declaration_id).await.expect("approved");
    assert_eq!((approved.kind.as_str(), approved.state.as_str()), ("change", "approved"));
    assert_eq!(approved.unit_number, first.unit_number, "the unit keeps its number");

    // Applied, once, in one go.
    assert!(saga.open_changes(unit).await.is_empty());
    assert_eq!(saga.roster_lock(unit).await, None);
    assert_eq!(saga.listed(unit).await, ["孙三", "李四", "赵一"]);
    assert_eq!(saga.stored(&li_id).await, ("staff".into(), None, None, false, false));
    assert_eq!(saga.stored(&zhao).await.1.as_deref(), Some("13904691111"));
    assert!(saga.stored(&qian).await.3, "the transferred person's registration ended");
    assert_eq!(
        saga.stored(&sun_id).await,
        ("retiree_post_reform".into(), None, Some("2026-11-30".into()), false, false)
    );
    let change = last.declaration_id.clone();
    assert_eq!(
        saga.history(&qian).await,
        vec![
            (unit.to_owned(), "registered".to_owned(), String::new()),
            (unit.to_owned(), "approved".to_owned(), first.declaration_id.clone()),
            (unit.to_owned(), "ended".to_owned(), change.clone()),
        ]
    );
    assert_eq!(saga.history(&sun_id).await.last(), Some(&(unit.to_owned(), "retired".to_owned(), change.clone())));
    assert_eq!(saga.history(&zhao).await.last(), Some(&(unit.to_owned(), "changed".to_owned(), change.clone())));
    assert_eq!(saga.history(&li_id).await.last(), Some(&(unit.to_owned(), "approved".to_owned(), change.clone())));
    let subjects: Vec<String> =
        sqlx::query_scalar("select subject from kit_outbox where subject like '%roster_changes_applied' or subject like '%person_registration_ended'")
            .fetch_all(&saga.personnel.pool)
            .await
            .expect("outbox");
    assert_eq!(subjects.len(), 2, "one applied event and one ended registration: {subjects:?}");
    let applied: i64 = sqlx::query_scalar("select count(*) from applied_declarations where declaration_id = $1::uuid")
        .bind(&change)
        .fetch_one(&saga.personnel.pool)
        .await
        .expect("applied");
    assert_eq!(applied, 1);
    let repeated = saga
        .personnel
        .client
        .clone()
        .apply_declaration(proto::personnel::ApplyDeclarationRequest {
            caller: Some(Caller { actor: "system".into(), role: "system".into(), ..Caller::default() }),
            institution_code: unit.into(),
            declaration_id: change.clone(),
        })
        .await
        .expect("applied again")
        .into_inner();
    assert!(!repeated.applied, "a second apply changes nothing");
    let as_operator = saga
        .personnel
        .client
        .clone()
        .apply_declaration(proto::personnel::ApplyDeclarationRequest {
            caller: operator(unit),
            institution_code: unit.into(),
            declaration_id: change,
        })
        .await;
    assert_eq!(as_operator.expect_err("platform only").code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_person_moves_between_units_of_different_agencies_through_two_change_declarations() {
    let saga = saga(patient_reconciler).await;
    let (from, to) = ("230500201", "230100202");
    let number = id_number(201);
    saga.enrolled_unit(from, AGENCY, &[("周五", number.clone())]).await;
    saga.enrolled_unit(to, OTHER_AGENCY, &[("吴六", id_number(202))]).await;
    let arriving = accepted(staff_member("周五", &number), &[POPULATION_UNAVAILABLE]);

    // While the old registration stands, the new unit is told whom to contact, and nothing is saved.
    let refused = saga.save_change(to, add(arriving.clone())).await.expect_err("insured elsewhere");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("经办机构230500"), "names the holding agency: {}", refused.message());
    assert!(saga.open_changes(to).await.is_empty());

    // The old unit declares the transfer; its agency approves.
    let leaving = saga.person_id(from, "周五").await;
    saga.save_change(from, remove(&leaving, "2026-11-30", "transfer", None)).await.expect("减员 saved");
    let out = saga.declare_changes(from).await.expect("declared");
    saga.claim(reviewer(AGENCY), &out.declaration_id).await.expect("claimed");
    saga.approve(reviewer(AGENCY), &out.declaration_id).await.expect("approved");

    // Now the new unit's 增员 goes through, and its own agency approves it.
    let added = saga.save_change(to, add(arriving)).await.expect("增员 saved");
    let other_claims = saga.claim(reviewer(AGENCY), "not-a-declaration").await;
    assert_eq!(other_claims.expect_err("not found").code(), Code::NotFound);
    let declared = saga.declare_changes(to).await.expect("declared");
    let foreign = saga.claim(reviewer(AGENCY), &declared.declaration_id).await;
    assert_eq!(foreign.expect_err("another agency's unit").code(), Code::NotFound);
    saga.claim(reviewer(OTHER_AGENCY), &declared.declaration_id).await.expect("claimed by its agency");
    saga.approve(reviewer(OTHER_AGENCY), &declared.declaration_id).await.expect("approved");
    assert_eq!(saga.listed(to).await, ["吴六", "周五"]);
    assert!(saga.listed(from).await.is_empty());

    // One history across both units, each step with its declaration.
    let first_from = saga.latest(from).await.expect("declaration");
    let events: Vec<(String, String)> =
        saga.history(&added.person_id).await.into_iter().map(|(unit, event, _)| (unit, event)).collect();
    assert_eq!(
        events,
        [(from, "registered"), (from, "approved"), (from, "ended"), (to, "registered"), (to, "approved")]
            .map(|(unit, event)| (unit.to_owned(), event.to_owned()))
    );
    assert_eq!(first_from.declaration_id, out.declaration_id);
    let active: i64 =
        sqlx::query_scalar("select count(*) from persons where id_number_masked = $1 and ended_at is null")
            .bind(format!("{}********{}", &number[..6], &number[14..]))
            .fetch_one(&saga.personnel.pool)
            .await
            .expect("count");
    assert_eq!(active, 1, "one active registration at every moment");
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Change,
    Declare,
    Withdraw,
    Claim,
    Approve,
    Reject { with_reason: bool },
}

fn action() -> impl proptest::strategy::Strategy<Value = Action> {
    use proptest::prelude::*;
    prop_oneof![
        3 => Just(Action::Change),
        3 => Just(Action::Declare),
        2 => Just(Action::Withdraw),
        2 => Just(Action::Claim),
        1 => Just(Action::Approve),
        2 => any::<bool>().prop_map(|with_reason| Action::Reject { with_reason }),
    ]
}

/// The rules of the first declaration, for a change declaration: its state after each action, and whether the
/// action is allowed; `open` says whether a change is waiting (declaring needs one).
fn expected(state: &str, open: bool, action: Action) -> (bool, &'static str) {
    let unchanged = match state {
        "declared" => "declared",
        "under_review" => "under_review",
        _ => "open",
    };
    match (state, action) {
        ("open", Action::Change) => (true, "open"),
        ("open", Action::Declare) if open => (true, "declared"),
        ("declared", Action::Withdraw) => (true, "open"),
        ("declared", Action::Claim) => (true, "under_review"),
        ("under_review", Action::Approve) => (true, "open"),
        ("under_review", Action::Reject { with_reason: true }) => (true, "open"),
        _ => (false, unchanged),
    }
}

#[test]
fn random_sequences_of_actions_on_change_declarations_follow_the_rules_of_the_first() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let saga = runtime.block_on(saga(patient_reconciler));
    let next_unit = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(actions in proptest::collection::vec(action(), 1..14))| {
        runtime.block_on(async {
            let n = next_unit.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let unit = format!("2305008{n:02}");
            let number = id_number(500 + n);
            saga.enrolled_unit(&unit, AGENCY, &[("郑七", number.clone())]).await;
            let person_id = saga.person_id(&unit, "郑七").await;
            let (mut state, mut open) = ("open".to_owned(), false);
            for (step, action) in actions.iter().enumerate() {
                let latest = saga
                    .units
                    .client
                    .clone()
                    .get_declaration(GetDeclarationRequest { caller: operator(&unit), declaration_id: String::new() })
                    .await
                    .map(|reply| reply.into_inner().declaration_id)
                    .unwrap_or_default();
                let result = match action {
                    Action::Change => {
                        // A 变更 that differs from the roster at every step.
                        let phone = format!("139046{:05}", step + 1);
                        let corrected = accepted(PersonInput { phone, ..staff_member("郑七", &number) }, &[POPULATION_UNAVAILABLE]);
                        saga.save_change(&unit, update(&person_id, corrected)).await.map(|_| ())
                    }
                    Action::Declare => saga.declare_changes(&unit).await.map(|_| ()),
                    Action::Withdraw => saga.withdraw(&unit).await.map(|_| ()),
                    Action::Claim => saga.claim(reviewer(AGENCY), &latest).await.map(|_| ()),
                    Action::Approve => saga.approve(reviewer(AGENCY), &latest).await.map(|_| ()),
                    Action::Reject { with_reason } => {
                        let reason = if *with_reason { "材料不全" } else { "" };
                        saga.reject(reviewer(AGENCY), &latest, reason).await.map(|_| ())
                    }
                };
                let (allowed, next) = expected(&state, open, *action);
                assert_eq!(result.is_ok(), allowed, "{action:?} in {state} (open change: {open}): {result:?}");
                if let Err(status) = &result {
                    assert_ne!(status.code(), Code::Internal, "{action:?} in {state}");
                }
                match (action, allowed) {
                    (Action::Change, true) => open = true,
                    (Action::Approve, true) => open = false,
                    _ => {}
                }
                state = next.to_owned();
                assert_eq!(saga.unit_state(&unit).await, "approved", "after {action:?}");
                assert!(saga.active_declarations(&unit).await <= 1);
                let locked = saga.roster_lock(&unit).await.is_some();
                assert_eq!(locked, state != "open", "the changes are frozen exactly while declared ({state})");
                assert_eq!(saga.open_changes(&unit).await.len(), usize::from(open), "after {action:?}");
            }
        });
    });
}

#[tokio::test]
async fn changes_are_refused_before_approval_and_for_people_of_other_units() {
    let saga = saga(patient_reconciler).await;
    let unit = "230500301";
    saga.ready_unit(unit, 1).await;
    let person_id = saga.person_id(unit, &person_name(0)).await;
    let early = saga.save_change(unit, remove(&person_id, "2026-11-30", "death", None)).await;
    assert_eq!(code_of(early), (Code::FailedPrecondition, "not_enrolled".into()));
    let change = saga.declare_changes(unit).await;
    assert_eq!(code_of(change), (Code::FailedPrecondition, "not_approved".into()));

    let other = "230500302";
    saga.enrolled_unit(other, AGENCY, &[("王八", id_number(302))]).await;
    let foreign = saga.save_change(other, remove(&person_id, "2026-11-30", "death", None)).await;
    assert_eq!(code_of(foreign), (Code::NotFound, "person_not_found".into()));
    let by_reviewer = saga
        .personnel
        .client
        .clone()
        .save_roster_change(SaveRosterChangeRequest {
            caller: reviewer(AGENCY),
            ..remove(&person_id, "2026-11-30", "death", None)
        })
        .await;
    assert_eq!(by_reviewer.expect_err("operators only").code(), Code::PermissionDenied);
    let bad_action =
        saga.save_change(other, SaveRosterChangeRequest { action: "move".into(), ..Default::default() }).await;
    assert_eq!(code_of(bad_action), (Code::InvalidArgument, "unknown_action".into()));
    let created = saga
        .personnel
        .client
        .clone()
        .create_person(CreatePersonRequest {
            caller: operator(other),
            person: Some(accepted(staff_member("冯九", &id_number(303)), &[POPULATION_UNAVAILABLE])),
            idempotency_key: String::new(),
        })
        .await;
    assert_eq!(code_of(created), (Code::FailedPrecondition, "roster_enrolled".into()));
}
