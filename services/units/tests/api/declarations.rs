//! Declaring, withdrawing and the review across units and personnel: the cycle with its history and events, every
//! refusal, the saga stopped at each step in either service and settled by the reconciler, and random sequences
//! of unit and reviewer actions checked against the rules.

use std::time::Duration;

use futures::StreamExt as _;
use prost::Message as _;
use proto::common::Caller;
use proto::events::DeclarationChanged;
use proto::personnel::{CreatePersonRequest, PersonInput, UpdatePersonRequest};
use proto::units::{
    Declaration, DeclareRequest, GetDeclarationRequest, ListReviewQueueRequest, RejectDeclarationRequest,
    ReviewRequest, UnitRecordInput, UpdateUnitRecordRequest, WithdrawDeclarationRequest,
};
use tonic::Code;

use crate::helpers::{TestPersonnel, TestUnits, operator, spawn_units_with, staff};

pub(crate) const AGENCY: &str = "230500";
pub(crate) const OTHER_AGENCY: &str = "230100";

fn fast_reconciler(config: &mut units::Config) {
    config.declarations.settle_after = Duration::ZERO;
    config.declarations.settle_every = Duration::from_millis(100);
    config.declarations.freeze_timeout = Duration::from_secs(2);
}

/// The reconciler waits long enough that only the tests that want it see it act.
pub(crate) fn patient_reconciler(config: &mut units::Config) {
    config.declarations.settle_after = Duration::from_secs(3600);
    config.declarations.freeze_timeout = Duration::from_secs(2);
}

pub(crate) fn record() -> UnitRecordInput {
    UnitRecordInput {
        unit_type: "机关".into(),
        region_code: "230502".into(),
        subordination: "市".into(),
        funding_source: "全额拨款".into(),
        legal_representative: "王建国".into(),
        address: "双鸭山市尖山区新兴大街88号".into(),
        post_code: "155100".into(),
        contact_name: "张伟".into(),
        contact_phone: "0469-4221234".into(),
        clerk_name: "张伟".into(),
        clerk_phone: "13804691234".into(),
        bank_name: "中国工商银行双鸭山分行".into(),
        bank_account_name: "双鸭山市财政局".into(),
        bank_account: "0907021009000012345".into(),
        ..UnitRecordInput::default()
    }
}

pub(crate) fn staff_member(name: &str, id_number: &str) -> PersonInput {
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

/// A valid 18-digit ID number born in 1985 with sequence `n`.
pub(crate) fn id_number(n: u32) -> String {
    validators::id_number::with_check_char(&format!("230502198503{:02}{:03}", 1 + n % 28, n % 1000))
}

/// Names may hold only Chinese characters, letters and "·".
pub(crate) fn person_name(n: usize) -> String {
    let names = ["甲", "乙", "丙", "丁", "戊", "己", "庚", "辛", "壬", "癸"];
    format!("人员{}{}", names[n % 10], names[n / 10 % 10])
}

pub(crate) struct Saga {
    pub(crate) units: TestUnits,
    pub(crate) personnel: TestPersonnel,
}

pub(crate) async fn saga(change: impl FnOnce(&mut units::Config)) -> Saga {
    let units = spawn_units_with(change).await;
    let personnel = TestPersonnel::start(&units).await;
    Saga { units, personnel }
}

pub(crate) fn reviewer(agency: &str) -> Option<Caller> {
    staff("agency_reviewer", agency)
}

fn other_reviewer(agency: &str) -> Option<Caller> {
    Some(Caller { actor: "test.second_reviewer".into(), ..reviewer(agency).unwrap_or_default() })
}

impl Saga {
    /// A unit with a complete record and `people` staff members.
    pub(crate) async fn ready_unit(&self, unit: &str, people: u32) {
        self.units.draft(unit, AGENCY).await;
        self.units
            .client
            .clone()
            .update_unit_record(UpdateUnitRecordRequest { caller: operator(unit), record: Some(record()) })
            .await
            .expect("record saved");
        for n in 0..people {
            let base: u32 = unit.parse::<u32>().unwrap_or(0) % 97;
            self.add_person(unit, &person_name(n as usize), &id_number(base * 10 + n)).await.expect("person saved");
        }
    }

    pub(crate) async fn add_person(&self, unit: &str, name: &str, id_number: &str) -> Result<String, tonic::Status> {
        let request = CreatePersonRequest {
            caller: operator(unit),
            person: Some(PersonInput {
                accepted_warnings: vec!["population_unavailable".into()],
                ..staff_member(name, id_number)
            }),
            idempotency_key: String::new(),
        };
        let reply = self.personnel.client.clone().create_person(request).await?.into_inner();
        Ok(reply.person.map(|person| person.person_id).unwrap_or_default())
    }

    pub(crate) async fn rename_person(
        &self,
        unit: &str,
        person_id: &str,
        name: &str,
        id: &str,
    ) -> Result<(), tonic::Status> {
        let request = UpdatePersonRequest {
            caller: operator(unit),
            person_id: person_id.into(),
            person: Some(PersonInput {
                accepted_warnings: vec!["population_unavailable".into()],
                ..staff_member(name, id)
            }),
        };
        self.personnel.client.clone().update_person(request).await.map(|_| ())
    }

    pub(crate) async fn declare(&self, unit: &str) -> Result<Declaration, tonic::Status> {
        self.units
            .client
            .clone()
            .declare(DeclareRequest { caller: operator(unit), ..Default::default() })
            .await
            .map(|r| r.into_inner())
    }

    pub(crate) async fn withdraw(&self, unit: &str) -> Result<Declaration, tonic::Status> {
        let request = WithdrawDeclarationRequest { caller: operator(unit) };
        self.units.client.clone().withdraw_declaration(request).await.map(|r| r.into_inner())
    }

    pub(crate) async fn latest(&self, unit: &str) -> Result<Declaration, tonic::Status> {
        let request = GetDeclarationRequest { caller: operator(unit), declaration_id: String::new() };
        self.units.client.clone().get_declaration(request).await.map(|r| r.into_inner())
    }

    pub(crate) async fn claim(&self, caller: Option<Caller>, id: &str) -> Result<Declaration, tonic::Status> {
        let request = ReviewRequest { caller, declaration_id: id.into() };
        self.units.client.clone().claim_declaration(request).await.map(|r| r.into_inner())
    }

    pub(crate) async fn approve(&self, caller: Option<Caller>, id: &str) -> Result<Declaration, tonic::Status> {
        let request = ReviewRequest { caller, declaration_id: id.into() };
        self.units.client.clone().approve_declaration(request).await.map(|r| r.into_inner())
    }

    pub(crate) async fn reject(
        &self,
        caller: Option<Caller>,
        id: &str,
        reason: &str,
    ) -> Result<Declaration, tonic::Status> {
        let request = RejectDeclarationRequest { caller, declaration_id: id.into(), reason: reason.into() };
        self.units.client.clone().reject_declaration(request).await.map(|r| r.into_inner())
    }

    pub(crate) async fn edit_record(&self, unit: &str) -> Result<(), tonic::Status> {
        let request = UpdateUnitRecordRequest {
            caller: operator(unit),
            record: Some(UnitRecordInput { contact_name: "李娜".into(), ..record() }),
        };
        self.units.client.clone().update_unit_record(request).await.map(|_| ())
    }

    pub(crate) async fn unit_state(&self, unit: &str) -> String {
        sqlx::query_scalar("select state from units where institution_code = $1")
            .bind(unit)
            .fetch_one(&self.units.pool)
            .await
            .expect("unit")
    }

    pub(crate) async fn active_declarations(&self, unit: &str) -> i64 {
        sqlx::query_scalar(
            "select count(*) from declarations where institution_code = $1 \
             and state in ('declaring', 'declared', 'claimed')",
        )
        .bind(unit)
        .fetch_one(&self.units.pool)
        .await
        .expect("count")
    }

    pub(crate) async fn roster_lock(&self, unit: &str) -> Option<String> {
        sqlx::query_scalar("select declaration_id from roster_locks where institution_code = $1")
            .bind(unit)
            .fetch_optional(&self.personnel.pool)
            .await
            .expect("lock")
    }

    pub(crate) async fn enrolled(&self, unit: &str) -> bool {
        sqlx::query_scalar("select exists (select 1 from enrolled_units where institution_code = $1)")
            .bind(unit)
            .fetch_one(&self.personnel.pool)
            .await
            .expect("enrolled")
    }

    pub(crate) async fn snapshot_digest(&self, declaration_id: &str) -> Option<String> {
        sqlx::query_scalar("select digest from roster_snapshots where declaration_id = $1::uuid")
            .bind(declaration_id)
            .fetch_optional(&self.personnel.pool)
            .await
            .expect("snapshot")
    }

    pub(crate) async fn settled(&self, unit: &str, state: &str) -> Declaration {
        kit::testing::eventually(Duration::from_secs(15), "the reconciler settles the declaration", || async {
            self.latest(unit).await.is_ok_and(|declaration| declaration.state == state)
        })
        .await;
        self.latest(unit).await.expect("declaration")
    }
}

pub(crate) fn code_of(result: Result<impl std::fmt::Debug, tonic::Status>) -> (Code, String) {
    let status = result.expect_err("refused");
    (status.code(), kit::status::reason(&status).unwrap_or_default())
}

#[tokio::test]
async fn a_declaration_goes_through_withdrawal_rejection_and_approval_with_its_history_and_events() {
    let saga = saga(patient_reconciler).await;
    let unit = "230500011";
    saga.ready_unit(unit, 2).await;
    let jetstream = async_nats::jetstream::new(saga.units.platform.nats.clone());
    let namespace = saga.units.platform.namespace.clone();

    let declared = saga.declare(unit).await.expect("declared");
    assert_eq!((declared.state.as_str(), declared.staff_count), ("declared", 2));
    assert!(declared.can_withdraw && !declared.roster_digest.is_empty());
    assert_eq!(saga.snapshot_digest(&declared.declaration_id).await.as_deref(), Some(declared.roster_digest.as_str()));
    assert_eq!(saga.unit_state(unit).await, "declared");
    // Frozen: neither the record nor the people change, and declaring again is refused.
    assert_eq!(code_of(saga.edit_record(unit).await), (Code::FailedPrecondition, "record_frozen".into()));
    let refused = saga.add_person(unit, "新人", &id_number(900)).await;
    assert_eq!(code_of(refused), (Code::FailedPrecondition, "roster_locked".into()));
    assert_eq!(code_of(saga.declare(unit).await).1, "already_declared");

    let withdrawn = saga.withdraw(unit).await.expect("withdrawn");
    assert_eq!(withdrawn.state, "withdrawn");
    assert_eq!(saga.unit_state(unit).await, "draft");
    assert_eq!(saga.roster_lock(unit).await, None, "the roster is released at once");
    let person_id = saga.add_person(unit, "新人", &id_number(900)).await.expect("editable again");

    let second = saga.declare(unit).await.expect("declared again");
    assert_eq!(second.staff_count, 3);
    // The other agency's reviewer finds nothing; the queue of the right one lists it.
    assert_eq!(code_of(saga.claim(reviewer(OTHER_AGENCY), &second.declaration_id).await).0, Code::NotFound);
    let queue = saga
        .units
        .client
        .clone()
        .list_review_queue(ListReviewQueueRequest { caller: reviewer(AGENCY), ..Default::default() })
        .await
        .expect("queue")
        .into_inner();
    assert_eq!(
        queue.declarations.iter().map(|d| d.declaration_id.clone()).collect::<Vec<_>>(),
        vec![second.declaration_id.clone()]
    );
    let claimed = saga.claim(reviewer(AGENCY), &second.declaration_id).await.expect("claimed");
    assert_eq!((claimed.state.as_str(), claimed.claimed_by.as_str()), ("claimed", "test.agency_reviewer"));
    assert_eq!(saga.unit_state(unit).await, "under_review");
    assert_eq!(code_of(saga.withdraw(unit).await).1, "already_claimed");
    assert_eq!(code_of(saga.reject(reviewer(AGENCY), &second.declaration_id, " ").await).1, "reason_required");
    let long = "因".repeat(201);
    let status = saga.reject(reviewer(AGENCY), &second.declaration_id, &long).await.expect_err("too long");
    assert_eq!(kit::status::violations(&status)[0].code, "reason_too_long");
    let by_another = saga.reject(other_reviewer(AGENCY), &second.declaration_id, "不对").await;
    assert_eq!(code_of(by_another).1, "claimed_by_another");

    let rejected =
        saga.reject(reviewer(AGENCY), &second.declaration_id, "新人的参加工作时间有误").await.expect("rejected");
    assert_eq!((rejected.state.as_str(), rejected.reason.as_str()), ("rejected", "新人的参加工作时间有误"));
    let seen = saga.latest(unit).await.expect("the unit reads it");
    assert_eq!(seen.reason, "新人的参加工作时间有误");
    assert_eq!(saga.unit_state(unit).await, "draft");
    kit::testing::eventually(Duration::from_secs(5), "released", || async { saga.roster_lock(unit).await.is_none() })
        .await;

    saga.rename_person(unit, &person_id, "新人甲", &id_number(900)).await.expect("corrected");
    saga.edit_record(unit).await.expect("record corrected");
    let third = saga.declare(unit).await.expect("declared a third time");
    saga.claim(reviewer(AGENCY), &third.declaration_id).await.expect("claimed");
    let as_reviewer = saga
        .units
        .client
        .clone()
        .get_declaration(GetDeclarationRequest {
            caller: reviewer(AGENCY),
            declaration_id: third.declaration_id.clone(),
        })
        .await
        .expect("the reviewer reads it")
        .into_inner();
    assert_eq!(as_reviewer.previous_rejected_id, second.declaration_id);
    assert_eq!(
        as_reviewer.unit_changes.iter().map(|c| (c.label.as_str(), c.after.as_str())).collect::<Vec<_>>(),
        vec![("联系人", "李娜")]
    );
    assert!(
        as_reviewer.can_decide && as_reviewer.unit_snapshot.is_some_and(|r| r.bank_account == "0907021009000012345")
    );
    let roster = saga
        .personnel
        .client
        .clone()
        .get_roster_snapshot(proto::personnel::GetRosterSnapshotRequest {
            caller: reviewer(AGENCY),
            declaration_id: third.declaration_id.clone(),
            compare_to: second.declaration_id.clone(),
            summary_only: false,
        })
        .await;
    // Personnel learns a unit's agency from identity's first-login event, which this test does not send.
    assert_eq!(roster.expect_err("no agency known").code(), Code::NotFound);

    let approved = saga.approve(reviewer(AGENCY), &third.declaration_id).await.expect("approved");
    assert_eq!(approved.state, "approved");
    assert!(approved.unit_number.starts_with("230502") && approved.unit_number.len() == 12, "{}", approved.unit_number);
    assert_eq!(saga.unit_state(unit).await, "approved");
    assert_eq!(code_of(saga.declare(unit).await).1, "already_approved");
    assert_eq!(
        approved.history.iter().map(|t| t.to_state.as_str()).collect::<Vec<_>>(),
        vec!["declaring", "declared", "claimed", "approved"]
    );
    assert!(approved.history.iter().all(|t| !t.unit_digest.is_empty()));
    assert_eq!(approved.history[2].actor, "test.agency_reviewer");

    // Every transition went out through the outbox, in order.
    let stream = jetstream.get_stream(namespace.events_stream("units")).await.expect("stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: namespace.event_subject("units", "declaration.*"),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut states = Vec::new();
    while states.len() < 8 {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("an event in time")
            .expect("an event")
            .expect("a message");
        states.push(DeclarationChanged::decode(message.payload.clone()).expect("decodes").state);
    }
    assert_eq!(states, ["declared", "withdrawn", "declared", "claimed", "rejected", "declared", "claimed", "approved"]);
}

#[tokio::test]
async fn declaring_needs_a_complete_record_and_at_least_one_person() {
    let saga = saga(patient_reconciler).await;
    let unit = "230500012";
    saga.units.draft(unit, AGENCY).await;
    assert_eq!(code_of(saga.declare(unit).await), (Code::FailedPrecondition, "record_incomplete".into()));
    assert_eq!(code_of(saga.latest(unit).await).1, "not_declared", "nothing was started");

    saga.ready_unit_record(unit).await;
    let refused = saga.declare(unit).await.expect_err("no people");
    assert_eq!(
        (refused.code(), kit::status::reason(&refused).as_deref()),
        (Code::FailedPrecondition, Some("no_persons"))
    );
    assert!(refused.message().contains("至少登记一名人员"), "{}", refused.message());
    let abandoned = saga.latest(unit).await.expect("the attempt is on record");
    assert_eq!(abandoned.state, "abandoned");
    assert_eq!(saga.unit_state(unit).await, "draft");
    assert_eq!(saga.active_declarations(unit).await, 0);

    saga.add_person(unit, "张伟", &id_number(1)).await.expect("a person");
    assert_eq!(saga.declare(unit).await.expect("declared").state, "declared");
    // Only the unit's operator declares or withdraws.
    let as_reviewer =
        saga.units.client.clone().declare(DeclareRequest { caller: reviewer(AGENCY), ..Default::default() }).await;
    assert_eq!(code_of(as_reviewer).0, Code::PermissionDenied);
    let as_admin = saga
        .units
        .client
        .clone()
        .withdraw_declaration(WithdrawDeclarationRequest { caller: staff("province_admin", "") })
        .await;
    assert_eq!(code_of(as_admin).0, Code::PermissionDenied);
    // Another unit's operator cannot read it by its id.
    let id = saga.latest(unit).await.expect("declaration").declaration_id;
    let probe = saga
        .units
        .client
        .clone()
        .get_declaration(GetDeclarationRequest { caller: operator("230500099"), declaration_id: id })
        .await;
    assert_eq!(code_of(probe).0, Code::NotFound);
}

impl Saga {
    async fn ready_unit_record(&self, unit: &str) {
        self.units
            .client
            .clone()
            .update_unit_record(UpdateUnitRecordRequest { caller: operator(unit), record: Some(record()) })
            .await
            .expect("record saved");
    }

    /// What must hold once a declaration is settled as declared: the roster frozen under its id with its digest.
    async fn assert_declared_consistently(&self, unit: &str) -> Declaration {
        let declaration = self.latest(unit).await.expect("declaration");
        assert_eq!(declaration.state, "declared");
        assert_eq!(self.unit_state(unit).await, "declared");
        assert_eq!(self.roster_lock(unit).await.as_deref(), Some(declaration.declaration_id.as_str()));
        assert_eq!(self.snapshot_digest(&declaration.declaration_id).await, Some(declaration.roster_digest.clone()));
        assert_eq!(self.active_declarations(unit).await, 1);
        declaration
    }
}

#[tokio::test]
async fn units_stopped_after_marking_declaring_is_settled_forward_after_its_restart() {
    let mut saga = saga(patient_reconciler).await;
    let unit = "230500013";
    saga.ready_unit(unit, 1).await;
    saga.units.config.faults.arm("declare.after_declaring");

    assert_eq!(saga.declare(unit).await.expect_err("stopped").code(), Code::Unavailable);
    assert_eq!(saga.latest(unit).await.expect("declaration").state, "declaring");
    assert_eq!(saga.roster_lock(unit).await, None, "personnel was never asked");

    saga.units.config.faults.disarm("declare.after_declaring");
    saga.units.restart_with(fast_reconciler).await;
    saga.settled(unit, "declared").await;
    saga.assert_declared_consistently(unit).await;
}

#[tokio::test]
async fn units_stopped_after_personnel_froze_is_settled_forward_with_the_same_snapshot() {
    let mut saga = saga(patient_reconciler).await;
    let unit = "230500014";
    saga.ready_unit(unit, 2).await;
    saga.units.config.faults.arm("declare.after_freeze");

    assert_eq!(saga.declare(unit).await.expect_err("stopped").code(), Code::Unavailable);
    let pending = saga.latest(unit).await.expect("declaration");
    assert_eq!(pending.state, "declaring");
    let frozen = saga.snapshot_digest(&pending.declaration_id).await.expect("personnel froze");

    saga.units.config.faults.disarm("declare.after_freeze");
    saga.units.restart_with(fast_reconciler).await;
    saga.settled(unit, "declared").await;
    let declared = saga.assert_declared_consistently(unit).await;
    assert_eq!(declared.roster_digest, frozen, "the freeze answered again with the snapshot it stored");
}

#[tokio::test]
async fn personnel_stopped_before_or_after_its_commit_or_unreachable_is_settled_forward() {
    for (n, point) in ["freeze.before_commit", "freeze.after_commit", "unreachable"].into_iter().enumerate() {
        let mut saga = saga(patient_reconciler).await;
        let unit = format!("23050002{n}");
        saga.ready_unit(&unit, 1).await;
        if point == "unreachable" {
            saga.personnel.stop().await;
        } else {
            saga.personnel.config.faults.arm(point);
            saga.personnel.resume().await;
        }

        let pending = saga.declare(&unit).await.expect("left to the reconciler");
        assert_eq!(pending.state, "declaring", "{point}");
        assert_eq!(saga.unit_state(&unit).await, "declaring");
        assert_eq!(code_of(saga.edit_record(&unit).await).1, "record_frozen", "{point}");
        let committed = saga.snapshot_digest(&pending.declaration_id).await.is_some();
        assert_eq!(committed, point == "freeze.after_commit", "{point}");

        saga.personnel.config.faults.disarm(point);
        saga.personnel.resume().await;
        saga.units.restart_with(fast_reconciler).await;
        saga.settled(&unit, "declared").await;
        saga.assert_declared_consistently(&unit).await;
    }
}

#[tokio::test]
async fn a_declaration_personnel_refuses_is_settled_back_to_draft() {
    let mut saga = saga(patient_reconciler).await;
    let unit = "230500015";
    saga.ready_unit(unit, 1).await;
    saga.units.config.faults.arm("declare.after_declaring");
    saga.declare(unit).await.expect_err("stopped");
    // While units was down the roster emptied (the only person was removed by hand): the freeze will be refused.
    sqlx::query("delete from persons").execute(&saga.personnel.pool).await.expect("emptied");

    saga.units.config.faults.disarm("declare.after_declaring");
    saga.units.restart_with(fast_reconciler).await;
    let abandoned = saga.settled(unit, "abandoned").await;
    assert!(abandoned.reason.contains("至少登记一名人员"), "{}", abandoned.reason);
    assert_eq!(saga.unit_state(unit).await, "draft");
    assert_eq!(saga.roster_lock(unit).await, None);
    saga.edit_record(unit).await.expect("editable again");
}

#[tokio::test]
async fn a_withdrawal_whose_release_was_lost_is_released_by_the_event() {
    let saga = saga(patient_reconciler).await;
    let unit = "230500016";
    saga.ready_unit(unit, 1).await;
    saga.declare(unit).await.expect("declared");
    saga.units.config.faults.arm("withdraw.after_commit");

    assert_eq!(saga.withdraw(unit).await.expect_err("stopped").code(), Code::Unavailable);
    assert_eq!(saga.latest(unit).await.expect("declaration").state, "withdrawn");

    kit::testing::eventually(Duration::from_secs(15), "personnel released the roster on the event", || async {
        saga.roster_lock(unit).await.is_none()
    })
    .await;
    saga.add_person(unit, "新人", &id_number(77)).await.expect("people editable again");
    saga.units.config.faults.disarm("withdraw.after_commit");
}

/// What a unit or a reviewer does in the property test.
#[derive(Debug, Clone)]
enum Action {
    EditRecord,
    EditPerson,
    Declare,
    Withdraw,
    Claim,
    Approve,
    Reject { with_reason: bool },
}

fn action() -> impl proptest::strategy::Strategy<Value = Action> {
    use proptest::prelude::*;
    prop_oneof![
        1 => Just(Action::EditRecord),
        1 => Just(Action::EditPerson),
        3 => Just(Action::Declare),
        2 => Just(Action::Withdraw),
        2 => Just(Action::Claim),
        1 => Just(Action::Approve),
        2 => any::<bool>().prop_map(|with_reason| Action::Reject { with_reason }),
    ]
}

/// The rules: what the unit's state is after each action, and whether the action is allowed.
fn expected(state: &str, action: &Action) -> (bool, &'static str) {
    let unchanged = match state {
        "draft" => "draft",
        "declared" => "declared",
        "under_review" => "under_review",
        _ => "approved",
    };
    match (state, action) {
        ("draft", Action::EditRecord | Action::EditPerson) => (true, "draft"),
        ("draft", Action::Declare) => (true, "declared"),
        ("declared", Action::Withdraw) => (true, "draft"),
        ("declared", Action::Claim) => (true, "under_review"),
        ("under_review", Action::Approve) => (true, "approved"),
        ("under_review", Action::Reject { with_reason: true }) => (true, "draft"),
        _ => (false, unchanged),
    }
}

#[test]
fn random_sequences_of_unit_and_reviewer_actions_never_break_the_rules() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let saga = runtime.block_on(saga(patient_reconciler));
    let next_unit = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(actions in proptest::collection::vec(action(), 1..14))| {
        runtime.block_on(async {
            let unit = format!("2305009{:02}", next_unit.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
            saga.ready_unit(&unit, 1).await;
            let person_id: String = sqlx::query_scalar("select person_id::text from persons where institution_code = $1")
                .bind(&unit)
                .fetch_one(&saga.personnel.pool)
                .await
                .expect("person");
            let person_number = id_number(unit.parse::<u32>().unwrap_or(0) % 97 * 10);
            let mut state = "draft".to_owned();
            for (step, action) in actions.iter().enumerate() {
                let latest = saga.latest(&unit).await.map(|d| d.declaration_id).unwrap_or_default();
                let result = match action {
                    Action::EditRecord => saga.edit_record(&unit).await,
                    Action::EditPerson => saga.rename_person(&unit, &person_id, &person_name(step), &person_number).await,
                    Action::Declare => saga.declare(&unit).await.map(|_| ()),
                    Action::Withdraw => saga.withdraw(&unit).await.map(|_| ()),
                    Action::Claim => saga.claim(reviewer(AGENCY), &latest).await.map(|_| ()),
                    Action::Approve => saga.approve(reviewer(AGENCY), &latest).await.map(|_| ()),
                    Action::Reject { with_reason } => {
                        let reason = if *with_reason { "材料不全" } else { "" };
                        saga.reject(reviewer(AGENCY), &latest, reason).await.map(|_| ())
                    }
                };
                let (allowed, next) = expected(&state, action);
                assert_eq!(result.is_ok(), allowed, "{action:?} in {state}: {result:?}");
                if let Err(status) = &result {
                    assert_ne!(status.code(), Code::Internal, "{action:?} in {state}");
                }
                state = next.to_owned();
                assert_eq!(saga.unit_state(&unit).await, state, "after {action:?}");
                assert!(saga.active_declarations(&unit).await <= 1);
                let locked = saga.roster_lock(&unit).await.is_some();
                let pending = matches!(state.as_str(), "declared" | "under_review");
                assert_eq!(locked, pending, "the roster is frozen exactly while declared ({state})");
                // Once approved, the roster is enrolled: it changes only through change declarations.
                assert_eq!(saga.enrolled(&unit).await, state == "approved", "enrolled exactly once approved ({state})");
            }
        });
    });
}
