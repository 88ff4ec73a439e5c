//! The unit operator's record and people on 8443: JSON API (`getMyUnit`, `updateMyUnit`, `checkPerson`,
//! `createPerson`, `listPersons`, `getPerson`, `updatePerson`, `deletePerson`) and the pages of the manual's
//! chapters 4.1 and 5 (参保单位确认信息, 工作人员 and the two retiree registrations, 待办业务). The services decide;
//! this module only carries the caller along and renders.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use bytes::Bytes;
use minijinja::context;
use minijinja::value::{Serde, Value};
use proto::names::Service;
use proto::personnel::personnel_client::PersonnelClient;
use proto::personnel::{
    CheckPersonRequest, CheckReply, CreatePersonRequest, DeletePersonRequest, GetPersonRequest, ListCodesRequest,
    ListPersonsRequest, Person, PersonInput, UpdatePersonRequest,
};
use proto::units::units_client::UnitsClient;
use proto::units::{GetUnitRecordRequest, ListUnitCodesRequest, UnitRecord, UnitRecordInput, UpdateUnitRecordRequest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;
use crate::keys::rfc3339;
use crate::session::SignedIn;

fn personnel(state: &AppState) -> PersonnelClient<kit::rpc::NatsChannel> {
    PersonnelClient::new(state.platform.channel(Service::Personnel))
}

fn units(state: &AppState) -> UnitsClient<kit::rpc::NatsChannel> {
    UnitsClient::new(state.platform.channel(Service::Units))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| ApiError::bad_json(&error))
}

/// Only a unit operator has a unit of its own.
fn operator(signed_in: &SignedIn) -> Result<(), ApiError> {
    signed_in.require(&["unit_operator"])
}

// ---- the unit record ----

/// The unit record as the API shows it and takes it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UnitBody {
    pub unit_type: String,
    pub credit_code: String,
    pub org_code: String,
    pub region_code: String,
    pub subordination: String,
    pub funding_source: String,
    pub legal_representative: String,
    pub legal_representative_id_number: String,
    pub address: String,
    pub post_code: String,
    pub contact_name: String,
    pub contact_phone: String,
    pub email: String,
    pub clerk_name: String,
    pub clerk_phone: String,
    pub bank_name: String,
    pub bank_account_name: String,
    pub bank_account: String,
    pub administrative_posts: String,
    pub institutional_posts: String,
    pub logistics_posts: String,
    #[serde(deserialize_with = "crate::enrollment::one_or_many")]
    pub accepted_warnings: Vec<String>,
}

/// A form sends a repeated field once per value; serde_urlencoded gives the last, so forms use one comma list.
pub fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) => {
            text.split(',').map(str::trim).filter(|code| !code.is_empty()).map(str::to_owned).collect()
        }
        OneOrMany::Many(codes) => codes,
    })
}

impl UnitBody {
    fn into_input(self) -> UnitRecordInput {
        UnitRecordInput {
            unit_type: self.unit_type,
            credit_code: self.credit_code,
            org_code: self.org_code,
            region_code: self.region_code,
            subordination: self.subordination,
            funding_source: self.funding_source,
            legal_representative: self.legal_representative,
            legal_representative_id_number: self.legal_representative_id_number,
            address: self.address,
            post_code: self.post_code,
            contact_name: self.contact_name,
            contact_phone: self.contact_phone,
            email: self.email,
            clerk_name: self.clerk_name,
            clerk_phone: self.clerk_phone,
            bank_name: self.bank_name,
            bank_account_name: self.bank_account_name,
            bank_account: self.bank_account,
            administrative_posts: self.administrative_posts,
            institutional_posts: self.institutional_posts,
            logistics_posts: self.logistics_posts,
            accepted_warnings: self.accepted_warnings,
        }
    }
}

pub fn unit_json(record: &UnitRecord) -> serde_json::Value {
    let posts = |value: Option<u32>| value.map(serde_json::Value::from).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "institution_code": record.institution_code, "unit_name": record.unit_name, "credit_code": record.credit_code,
        "registry_unit_type": record.unit_type, "unit_type": record.unit_type_code, "org_code": record.org_code,
        "region_code": record.region_code, "agency_code": record.agency_code, "agency_name": record.agency_name, "subordination": record.subordination,
        "funding_source": record.funding_source, "legal_representative": record.legal_representative,
        "legal_representative_id_number_masked": record.legal_representative_id_number_masked,
        "address": record.address, "post_code": record.post_code, "contact_name": record.contact_name,
        "contact_phone": record.contact_phone, "email": record.email, "clerk_name": record.clerk_name,
        "clerk_phone": record.clerk_phone, "bank_name": record.bank_name, "bank_account_name": record.bank_account_name,
        "bank_account": record.bank_account, "administrative_posts": posts(record.administrative_posts),
        "institutional_posts": posts(record.institutional_posts), "logistics_posts": posts(record.logistics_posts),
        "state": record.state, "state_label": record.state_label, "complete": record.complete,
        "accepted_warnings": record.accepted_warnings, "updated_at": rfc3339(record.updated_at),
        "unit_number": record.unit_number,
    })
}

async fn my_unit(state: &AppState, signed_in: &SignedIn) -> Result<UnitRecord, ApiError> {
    operator(signed_in)?;
    let request = GetUnitRecordRequest { caller: signed_in.caller(), institution_code: String::new() };
    Ok(units(state).get_unit_record(request).await.map_err(ApiError::from)?.into_inner())
}

async fn update_unit(
    state: &AppState,
    signed_in: &SignedIn,
    body: UnitBody,
) -> Result<(UnitRecord, Vec<serde_json::Value>), ApiError> {
    operator(signed_in)?;
    let request = UpdateUnitRecordRequest { caller: signed_in.caller(), record: Some(body.into_input()) };
    let reply = units(state).update_unit_record(request).await.map_err(ApiError::from)?.into_inner();
    let warnings = reply
        .warnings
        .iter()
        .map(|warning| serde_json::json!({ "field": warning.field, "code": warning.code, "message": warning.message }))
        .collect();
    Ok((reply.record.unwrap_or_default(), warnings))
}

/// `getMyUnit`: GET /api/my-unit.
pub async fn get_my_unit_api(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    my_unit(&state, &signed_in).await.map(|record| Json(unit_json(&record))).into_response()
}

/// `updateMyUnit`: PUT /api/my-unit.
pub async fn update_my_unit_api(State(state): State<AppState>, signed_in: SignedIn, body: Bytes) -> Response {
    let result = match parse::<UnitBody>(&body) {
        Ok(body) => update_unit(&state, &signed_in, body).await,
        Err(error) => Err(error),
    };
    result
        .map(|(record, warnings)| Json(serde_json::json!({ "record": unit_json(&record), "warnings": warnings })))
        .into_response()
}

pub async fn unit_codes(state: &AppState) -> BTreeMap<String, Vec<(String, String)>> {
    units(state)
        .list_unit_codes(ListUnitCodesRequest {})
        .await
        .map(|reply| {
            reply
                .into_inner()
                .lists
                .into_iter()
                .map(|list| (list.name, list.codes.into_iter().map(|code| (code.code, code.label)).collect()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn user(signed_in: &SignedIn) -> Value {
    Value::from(Serde(crate::auth::AccountView::from(&signed_in.session)))
}

async fn render_unit(
    state: &AppState,
    signed_in: &SignedIn,
    form: Option<UnitBody>,
    errors: FieldErrors,
    warnings: Warnings,
    message: String,
    error: String,
) -> Response {
    let record = match my_unit(state, signed_in).await {
        Ok(record) => record,
        Err(problem) => return crate::operators::denied(state, signed_in, &problem),
    };
    let form = form.unwrap_or_else(|| UnitBody {
        unit_type: record.unit_type_code.clone(),
        credit_code: record.credit_code.clone(),
        org_code: record.org_code.clone(),
        region_code: record.region_code.clone(),
        subordination: record.subordination.clone(),
        funding_source: record.funding_source.clone(),
        legal_representative: record.legal_representative.clone(),
        address: record.address.clone(),
        post_code: record.post_code.clone(),
        contact_name: record.contact_name.clone(),
        contact_phone: record.contact_phone.clone(),
        email: record.email.clone(),
        clerk_name: record.clerk_name.clone(),
        clerk_phone: record.clerk_phone.clone(),
        bank_name: record.bank_name.clone(),
        bank_account_name: record.bank_account_name.clone(),
        bank_account: record.bank_account.clone(),
        administrative_posts: record.administrative_posts.map(|n| n.to_string()).unwrap_or_default(),
        institutional_posts: record.institutional_posts.map(|n| n.to_string()).unwrap_or_default(),
        logistics_posts: record.logistics_posts.map(|n| n.to_string()).unwrap_or_default(),
        ..UnitBody::default()
    });
    let agency_name = crate::keys::agency_options(state)
        .await
        .into_iter()
        .find(|(code, _)| *code == record.agency_code)
        .map(|(_, name)| name)
        .unwrap_or_default();
    state.pages.render(
        "unit.html",
        context! { section => "unit", user => user(signed_in), csrf => signed_in.session.csrf_token.clone(),
        agency_name => agency_name,
        record => Value::from(Serde(unit_json(&record))), form => Value::from(Serde(&form)),
        codes => Value::from(Serde(unit_codes(state).await)), errors => error_map(&errors), error_list => errors,
        warnings => warnings,
        message => message, error => error },
    )
}

pub async fn unit_page(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    render_unit(&state, &signed_in, None, Vec::new(), Vec::new(), String::new(), String::new()).await
}

/// The unit form: the values and one `accept_<code>` checkbox per warning the operator accepts.
#[derive(Debug, Default, Deserialize)]
pub struct UnitForm {
    #[serde(flatten)]
    pub unit: UnitBody,
    #[serde(flatten)]
    pub extra: BTreeMap<String, String>,
}

pub async fn unit_submit(State(state): State<AppState>, signed_in: SignedIn, Form(form): Form<UnitForm>) -> Response {
    let form = UnitBody { accepted_warnings: accepted_boxes(&form.extra), ..form.unit };
    match update_unit(&state, &signed_in, form.clone()).await {
        Ok(_) => {
            render_unit(&state, &signed_in, None, Vec::new(), Vec::new(), "单位信息已保存。".into(), String::new())
                .await
        }
        Err(problem) => {
            let (errors, warnings, message) = split_findings(&problem);
            render_unit(&state, &signed_in, Some(form), errors, warnings, String::new(), message).await
        }
    }
}

/// Warnings a form asks the operator to accept: (field, code, message).
pub(crate) type Warnings = Vec<(String, String, String)>;

/// Errors as (field, message) in the order the service found them, which is the form's order: the summary above
/// a form lists them so, and each field looks its own up.
pub(crate) type FieldErrors = Vec<(String, String)>;

pub(crate) fn error_map(errors: &FieldErrors) -> BTreeMap<String, String> {
    errors.iter().cloned().collect()
}

/// A refusal as a form shows it: errors at their fields; warnings to accept; a message.
pub(crate) fn split_findings(problem: &ApiError) -> (FieldErrors, Warnings, String) {
    if problem.code == "warnings_not_accepted" {
        let warnings = problem
            .errors
            .iter()
            .map(|warning| (warning.field.clone(), warning.code.clone(), warning.message.clone()))
            .collect();
        return (Vec::new(), warnings, problem.message.clone());
    }
    let (_, message) = crate::pages::page_errors(problem);
    let errors = problem.errors.iter().map(|error| (error.field.clone(), error.message.clone())).collect();
    (errors, Vec::new(), message)
}

// ---- people ----

/// A person as the API takes it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PersonBody {
    pub kind: String,
    pub name: String,
    pub id_type: String,
    pub id_number: String,
    pub sex: String,
    pub birth_date: String,
    pub funding_form: String,
    pub ethnicity: String,
    pub work_start: String,
    pub joined_unit: String,
    pub personnel_status: String,
    pub establishment: String,
    pub post_rank: String,
    pub wage_base: String,
    pub phone: String,
    pub address: String,
    pub retirement_date: String,
    pub retirement_category: String,
    pub monthly_pension: String,
    pub pay_start_month: String,
    pub pay_bank: String,
    pub pay_account: String,
    #[serde(deserialize_with = "crate::enrollment::one_or_many")]
    pub accepted_warnings: Vec<String>,
    pub deemed_periods: Vec<DeemedBody>,
}

/// One row of 视同缴费年限 as the API takes and shows it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DeemedBody {
    pub unit: String,
    pub from: String,
    pub to: String,
    #[serde(deserialize_with = "crate::enrollment::text_or_number")]
    pub months: String,
    pub reason: String,
}

/// A count a client may send as 12 or "12".
pub fn text_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(text) => text,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// The blank 视同缴费年限 rows a form offers below those already filled in.
const BLANK_DEEMED_ROWS: usize = 2;

impl DeemedBody {
    fn from_message(period: &proto::personnel::DeemedPeriod) -> Self {
        Self {
            unit: period.unit.clone(),
            from: period.from.clone(),
            to: period.to.clone(),
            months: period.months.clone(),
            reason: period.reason.clone(),
        }
    }

    fn is_blank(&self) -> bool {
        [&self.unit, &self.from, &self.to, &self.months, &self.reason].iter().all(|value| value.trim().is_empty())
    }
}

/// The form's 视同缴费年限 rows, sent as `deemed_periods[i].unit` and so on.
fn deemed_rows(extra: &BTreeMap<String, String>) -> Vec<DeemedBody> {
    let mut rows: BTreeMap<usize, DeemedBody> = BTreeMap::new();
    for (key, value) in extra {
        let Some((index, field)) = key.strip_prefix("deemed_periods[").and_then(|rest| rest.split_once("].")) else {
            continue;
        };
        let Ok(index) = index.parse::<usize>() else { continue };
        let row = rows.entry(index).or_default();
        match field {
            "unit" => row.unit = value.clone(),
            "from" => row.from = value.clone(),
            "to" => row.to = value.clone(),
            "months" => row.months = value.clone(),
            "reason" => row.reason = value.clone(),
            _ => {}
        }
    }
    // Rows keep their numbers, so a message about row 3 stays at row 3.
    let last = rows.keys().next_back().copied();
    last.map(|last| (0..=last).map(|index| rows.remove(&index).unwrap_or_default()).collect()).unwrap_or_default()
}

impl PersonBody {
    pub(crate) fn into_input(self) -> PersonInput {
        PersonInput {
            kind: self.kind,
            name: self.name,
            id_type: self.id_type,
            id_number: self.id_number,
            sex: self.sex,
            birth_date: self.birth_date,
            funding_form: self.funding_form,
            ethnicity: self.ethnicity,
            work_start: self.work_start,
            joined_unit: self.joined_unit,
            personnel_status: self.personnel_status,
            establishment: self.establishment,
            post_rank: self.post_rank,
            wage_base: self.wage_base,
            phone: self.phone,
            address: self.address,
            retirement_date: self.retirement_date,
            retirement_category: self.retirement_category,
            monthly_pension: self.monthly_pension,
            pay_start_month: self.pay_start_month,
            pay_bank: self.pay_bank,
            pay_account: self.pay_account,
            accepted_warnings: self.accepted_warnings,
            deemed_periods: self
                .deemed_periods
                .into_iter()
                .map(|row| proto::personnel::DeemedPeriod {
                    unit: row.unit,
                    from: row.from,
                    to: row.to,
                    months: row.months,
                    reason: row.reason,
                })
                .collect(),
        }
    }

    fn from_person(person: &Person) -> Self {
        Self {
            kind: person.kind.clone(),
            name: person.name.clone(),
            id_type: person.id_type.clone(),
            id_number: person.id_number.clone(),
            sex: person.sex.clone(),
            birth_date: person.birth_date.clone(),
            funding_form: person.funding_form.clone(),
            ethnicity: person.ethnicity.clone(),
            work_start: person.work_start.clone(),
            joined_unit: person.joined_unit.clone(),
            personnel_status: person.personnel_status.clone(),
            establishment: person.establishment.clone(),
            post_rank: person.post_rank.clone(),
            wage_base: person.wage_base.clone(),
            phone: person.phone.clone(),
            address: person.address.clone(),
            retirement_date: person.retirement_date.clone(),
            retirement_category: person.retirement_category.clone(),
            monthly_pension: person.monthly_pension.clone(),
            pay_start_month: person.pay_start_month.clone(),
            pay_bank: person.pay_bank.clone(),
            // The account is shown masked and must be typed again to change it.
            pay_account: String::new(),
            accepted_warnings: person.accepted_warnings.iter().map(|warning| warning.code.clone()).collect(),
            deemed_periods: person.deemed_periods.iter().map(DeemedBody::from_message).collect(),
        }
    }

    /// The rows a form shows: those typed, and blank ones to add more.
    fn with_blank_rows(&self) -> Self {
        let mut copy = self.clone();
        while copy.deemed_periods.iter().rev().take_while(|row| row.is_blank()).count() < BLANK_DEEMED_ROWS {
            copy.deemed_periods.push(DeemedBody::default());
        }
        copy
    }

    /// What a 校验 covered: a save of different values needs a new 校验.
    fn digest(&self) -> String {
        let mut copy = self.clone();
        copy.accepted_warnings.clear();
        let text = serde_json::to_string(&copy).unwrap_or_default();
        Sha256::digest(text.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

fn findings_json(findings: &[proto::personnel::Finding]) -> Vec<serde_json::Value> {
    findings
        .iter()
        .map(|finding| serde_json::json!({ "field": finding.field, "code": finding.code, "message": finding.message }))
        .collect()
}

fn check_json(reply: &CheckReply) -> serde_json::Value {
    let normalized = reply.normalized.clone().unwrap_or_default();
    serde_json::json!({
        "ok": reply.ok, "errors": findings_json(&reply.errors), "warnings": findings_json(&reply.warnings),
        "normalized": { "id_number": normalized.id_number, "sex": normalized.sex, "birth_date": normalized.birth_date },
    })
}

pub fn person_json(person: &Person) -> serde_json::Value {
    let accepted: Vec<serde_json::Value> = person
        .accepted_warnings
        .iter()
        .map(|warning| serde_json::json!({ "code": warning.code, "accepted_by": warning.accepted_by, "accepted_at": rfc3339(warning.accepted_at) }))
        .collect();
    let mut json = serde_json::json!({
        "person_id": person.person_id, "kind": person.kind, "kind_label": person.kind_label, "name": person.name,
        "id_type": person.id_type, "id_number_masked": person.id_number_masked, "sex": person.sex,
        "sex_label": person.sex_label, "birth_date": person.birth_date, "funding_form": person.funding_form,
        "ethnicity": person.ethnicity, "work_start": person.work_start, "joined_unit": person.joined_unit,
        "personnel_status": person.personnel_status, "establishment": person.establishment,
        "post_rank": person.post_rank, "wage_base": person.wage_base, "phone": person.phone, "address": person.address,
        "retirement_date": person.retirement_date, "retirement_category": person.retirement_category,
        "monthly_pension": person.monthly_pension, "pay_start_month": person.pay_start_month,
        "pay_bank": person.pay_bank, "pay_account_masked": person.pay_account_masked,
        "population_status": person.population_status, "accepted_warnings": accepted,
        "deemed_periods": person.deemed_periods.iter().map(DeemedBody::from_message).collect::<Vec<_>>(),
        "created_at": rfc3339(person.created_at), "updated_at": rfc3339(person.updated_at),
    });
    if !person.id_number.is_empty() {
        json["id_number"] = serde_json::Value::from(person.id_number.clone());
    }
    json
}

async fn check_person(
    state: &AppState,
    signed_in: &SignedIn,
    body: PersonBody,
    person_id: &str,
) -> Result<CheckReply, ApiError> {
    operator(signed_in)?;
    let request = CheckPersonRequest {
        caller: signed_in.caller(),
        person: Some(body.into_input()),
        person_id: person_id.to_owned(),
    };
    Ok(personnel(state).check_person(request).await.map_err(ApiError::from)?.into_inner())
}

/// Saves a new person (`person_id` None) or an edit. `idempotency_key` makes a create safe to retry.
async fn save_person(
    state: &AppState,
    signed_in: &SignedIn,
    body: PersonBody,
    person_id: Option<String>,
    idempotency_key: &str,
) -> Result<(Person, CheckReply), ApiError> {
    operator(signed_in)?;
    let reply = match person_id {
        None => {
            let request = CreatePersonRequest {
                caller: signed_in.caller(),
                person: Some(body.into_input()),
                idempotency_key: idempotency_key.to_owned(),
            };
            personnel(state).create_person(request).await
        }
        Some(person_id) => {
            let request =
                UpdatePersonRequest { caller: signed_in.caller(), person_id, person: Some(body.into_input()) };
            personnel(state).update_person(request).await
        }
    }
    .map_err(ApiError::from)?
    .into_inner();
    Ok((reply.person.unwrap_or_default(), reply.check.unwrap_or_default()))
}

async fn get_person(state: &AppState, signed_in: &SignedIn, person_id: String) -> Result<Person, ApiError> {
    operator(signed_in)?;
    let request = GetPersonRequest { caller: signed_in.caller(), person_id };
    Ok(personnel(state).get_person(request).await.map_err(ApiError::from)?.into_inner())
}

/// `checkPerson`: POST /api/persons/check.
pub async fn check_person_api(State(state): State<AppState>, signed_in: SignedIn, body: Bytes) -> Response {
    let result = match parse::<PersonBody>(&body) {
        Ok(body) => check_person(&state, &signed_in, body, "").await,
        Err(error) => Err(error),
    };
    result.map(|reply| Json(check_json(&reply))).into_response()
}

/// `createPerson`: POST /api/persons; an `Idempotency-Key` header makes it safe to retry.
pub async fn create_person_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let key = match headers.get("idempotency-key").map(|value| value.to_str()) {
        None => "",
        Some(Ok(key)) => key,
        Some(Err(_)) => {
            let error = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_idempotency_key",
                "Idempotency-Key 应为1至100个可见ASCII字符",
            );
            return error.into_response();
        }
    };
    let result = match parse::<PersonBody>(&body) {
        Ok(body) => save_person(&state, &signed_in, body, None, key).await,
        Err(error) => Err(error),
    };
    match result {
        Ok((person, check)) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "person": person_json(&person), "warnings": findings_json(&check.warnings) })),
        )
            .into_response(),
        Err(error) => error.into_response(),
    }
}

/// `updatePerson`: PUT /api/persons/{person_id}.
pub async fn update_person_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(person_id): Path<String>,
    body: Bytes,
) -> Response {
    let result = match parse::<PersonBody>(&body) {
        Ok(body) => save_person(&state, &signed_in, body, Some(person_id), "").await,
        Err(error) => Err(error),
    };
    result
        .map(|(person, check)| {
            Json(serde_json::json!({ "person": person_json(&person), "warnings": findings_json(&check.warnings) }))
        })
        .into_response()
}

/// `getPerson`: GET /api/persons/{person_id} (the ID number in clear; the unmasking is audited).
pub async fn get_person_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(person_id): Path<String>,
) -> Response {
    get_person(&state, &signed_in, person_id).await.map(|person| Json(person_json(&person))).into_response()
}

/// `deletePerson`: DELETE /api/persons/{person_id}.
pub async fn delete_person_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(person_id): Path<String>,
) -> Response {
    match delete_person(&state, &signed_in, person_id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn delete_person(state: &AppState, signed_in: &SignedIn, person_id: String) -> Result<(), ApiError> {
    operator(signed_in)?;
    let request = DeletePersonRequest { caller: signed_in.caller(), person_id };
    personnel(state).delete_person(request).await.map_err(ApiError::from)?;
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    pub kind: String,
    pub name: String,
    pub page: u32,
    pub page_size: u32,
    pub saved: String,
    pub deleted: String,
}

pub(crate) async fn list_persons(
    state: &AppState,
    signed_in: &SignedIn,
    query: &ListQuery,
) -> Result<serde_json::Value, ApiError> {
    operator(signed_in)?;
    let request = ListPersonsRequest {
        caller: signed_in.caller(),
        kind: query.kind.clone(),
        name: query.name.clone(),
        page: query.page,
        page_size: query.page_size,
        institution_code: String::new(),
    };
    let reply = personnel(state).list_persons(request).await.map_err(ApiError::from)?.into_inner();
    let persons: Vec<serde_json::Value> = reply
        .persons
        .iter()
        .map(|person| {
            serde_json::json!({ "person_id": person.person_id, "kind": person.kind, "kind_label": person.kind_label,
                "name": person.name, "id_type": person.id_type, "id_number_masked": person.id_number_masked,
                "sex_label": person.sex_label, "birth_date": person.birth_date,
                "population_status": person.population_status, "updated_at": rfc3339(person.updated_at) })
        })
        .collect();
    Ok(
        serde_json::json!({ "persons": persons, "total": reply.total, "page": reply.page, "page_size": reply.page_size }),
    )
}

/// `listPersons`: GET /api/persons.
pub async fn list_persons_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<ListQuery>,
) -> Response {
    list_persons(&state, &signed_in, &query).await.map(Json).into_response()
}

// ---- people: pages ----

pub(crate) const PAGE_KINDS: [(&str, &str); 3] = [
    ("staff", "工作人员参保登记"),
    ("retiree_pre_reform", "2014年10月1日前退休人员参保登记"),
    ("retiree_post_reform", "2014年10月1日后退休人员参保登记"),
];

pub(crate) fn kind_or_staff(kind: &str) -> &'static str {
    PAGE_KINDS.iter().find(|(code, _)| *code == kind).map_or("staff", |(code, _)| code)
}

pub async fn persons_page(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<ListQuery>,
) -> Response {
    let kind = kind_or_staff(&query.kind);
    let query = ListQuery { kind: kind.to_owned(), page_size: 20, ..query };
    let message = if !query.saved.is_empty() {
        format!("已保存：{}", query.saved)
    } else if !query.deleted.is_empty() {
        format!("已删除：{}", query.deleted)
    } else {
        String::new()
    };
    match list_persons(&state, &signed_in, &query).await {
        Ok(list) => state.pages.render(
            "persons.html",
            context! { section => "persons", user => user(&signed_in), csrf => signed_in.session.csrf_token.clone(),
            kind => kind, kinds => PAGE_KINDS.to_vec(), name => query.name.clone(),
            list => Value::from(Serde(list)), message => message },
        ),
        Err(problem) => crate::operators::denied(&state, &signed_in, &problem),
    }
}

pub(crate) async fn person_codes(state: &AppState) -> BTreeMap<String, Vec<(String, String)>> {
    personnel(state)
        .list_codes(ListCodesRequest {})
        .await
        .map(|reply| {
            reply
                .into_inner()
                .lists
                .into_iter()
                .map(|list| (list.name, list.codes.into_iter().map(|code| (code.code, code.label)).collect()))
                .collect()
        })
        .unwrap_or_default()
}

/// What a person form shows besides the values.
#[derive(Default)]
pub(crate) struct FormState {
    errors: FieldErrors,
    warnings: Warnings,
    message: String,
    error: String,
    /// The digest of the values a successful 校验 covered: 保存 is enabled only with it.
    checked: String,
    normalized: Option<(String, String)>,
    /// The new-person form's Idempotency-Key, made when the form is first shown.
    idempotency_key: String,
}

/// What a person form is for: registering before the roster is approved, or a change of an approved roster (a new
/// person, or an approved person's corrected fields), which waits for a change declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Register,
    ChangeAdd,
    ChangeUpdate,
}

impl Purpose {
    /// Where the form posts, and where its back link leads.
    fn paths(self, person_id: &str, kind: &str) -> (String, String, &'static str) {
        match (self, person_id) {
            (Purpose::Register, "") => ("/persons/new".into(), format!("/persons?kind={kind}"), "返回待办业务"),
            (Purpose::Register, id) => (format!("/persons/{id}"), format!("/persons?kind={kind}"), "返回待办业务"),
            (Purpose::ChangeAdd, "") => ("/changes/add".into(), "/changes".into(), "返回人员变更"),
            (Purpose::ChangeAdd, id) => (format!("/changes/add/{id}"), "/changes".into(), "返回人员变更"),
            (Purpose::ChangeUpdate, id) => (format!("/changes/update/{id}"), "/changes".into(), "返回人员变更"),
        }
    }
}

pub(crate) async fn render_person(
    state: &AppState,
    signed_in: &SignedIn,
    purpose: Purpose,
    person_id: &str,
    form: &PersonBody,
    view: FormState,
) -> Response {
    let kind = kind_or_staff(&form.kind);
    let label = PAGE_KINDS.iter().find(|(code, _)| *code == kind).map_or("", |(_, label)| label);
    let heading = match purpose {
        Purpose::Register => label.to_owned(),
        Purpose::ChangeAdd => format!("增员：{}", label.trim_end_matches("参保登记")),
        Purpose::ChangeUpdate => format!("变更：{}", label.trim_end_matches("参保登记")),
    };
    let (form_action, back_url, back_label) = purpose.paths(person_id, kind);
    let section = if purpose == Purpose::Register { "persons" } else { "changes" };
    state.pages.render(
        "person.html",
        context! { section => section, user => user(signed_in), csrf => signed_in.session.csrf_token.clone(),
        heading => heading, kind => kind, retiree => kind != "staff", person_id => person_id,
        form_action => form_action, back_url => back_url, back_label => back_label,
        form => Value::from(Serde(form.with_blank_rows())), codes => Value::from(Serde(person_codes(state).await)),
        errors => error_map(&view.errors), error_list => view.errors, warnings => view.warnings, message => view.message, error => view.error,
        checked => view.checked, normalized => view.normalized, idempotency_key => view.idempotency_key },
    )
}

pub async fn new_person_page(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<ListQuery>,
) -> Response {
    if let Err(problem) = operator(&signed_in) {
        return crate::operators::denied(&state, &signed_in, &problem);
    }
    let form = PersonBody {
        kind: kind_or_staff(&query.kind).to_owned(),
        id_type: "01".into(),
        ethnicity: "01".into(),
        ..PersonBody::default()
    };
    let view = FormState { idempotency_key: uuid::Uuid::new_v4().to_string(), ..FormState::default() };
    render_person(&state, &signed_in, Purpose::Register, "", &form, view).await
}

pub async fn edit_person_page(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(person_id): Path<String>,
) -> Response {
    edit_page(state, signed_in, Purpose::Register, person_id).await
}

/// A saved person's form, filled in from the person (the number unmasked, which personnel audits).
pub(crate) async fn edit_page(state: AppState, signed_in: SignedIn, purpose: Purpose, person_id: String) -> Response {
    match get_person(&state, &signed_in, person_id.clone()).await {
        Ok(person) => {
            let form = PersonBody::from_person(&person);
            let view = FormState {
                message: "修改后请重新校验，校验通过后才能保存。".into(), ..FormState::default()
            };
            render_person(&state, &signed_in, purpose, &person_id, &form, view).await
        }
        Err(problem) => crate::operators::denied(&state, &signed_in, &problem),
    }
}

/// The person form: the values, the button pressed (校验 checks; 保存 saves what the last 校验 covered), the digest
/// of the last successful 校验, and one `accept_<code>` checkbox per warning the operator accepts.
#[derive(Debug, Default, Deserialize)]
pub struct PersonForm {
    #[serde(flatten)]
    pub person: PersonBody,
    #[serde(flatten)]
    pub extra: BTreeMap<String, String>,
}

/// The warning codes of ticked `accept_<code>` checkboxes.
pub(crate) fn accepted_boxes(extra: &BTreeMap<String, String>) -> Vec<String> {
    extra.keys().filter_map(|key| key.strip_prefix("accept_")).map(str::to_owned).collect()
}

pub async fn new_person_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Form(form): Form<PersonForm>,
) -> Response {
    person_submit(state, signed_in, Purpose::Register, None, form).await
}

pub async fn edit_person_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(person_id): Path<String>,
    Form(form): Form<PersonForm>,
) -> Response {
    person_submit(state, signed_in, Purpose::Register, Some(person_id), form).await
}

/// 校验 or 保存 of a person form, whatever it is for.
pub(crate) async fn person_submit(
    state: AppState,
    signed_in: SignedIn,
    purpose: Purpose,
    person_id: Option<String>,
    form: PersonForm,
) -> Response {
    let id = person_id.clone().unwrap_or_default();
    let mut body = form.person;
    body.accepted_warnings = accepted_boxes(&form.extra);
    body.deemed_periods = deemed_rows(&form.extra);
    while body.deemed_periods.last().is_some_and(DeemedBody::is_blank) {
        body.deemed_periods.pop();
    }
    let action = form.extra.get("action").map(String::as_str).unwrap_or("check");
    // The new-person form carries a key made when it was first shown, so a double 保存 saves once.
    let key = form.extra.get("idempotency_key").cloned().unwrap_or_default();
    let checked = form.extra.get("checked").cloned().unwrap_or_default();
    let digest = body.digest();
    if action == "save" && checked != digest {
        let view = FormState {
            error: "内容已修改，请先校验，校验通过后再保存。".into(), ..FormState::default()
        };
        return render_person(&state, &signed_in, purpose, &id, &body, FormState { idempotency_key: key, ..view })
            .await;
    }
    if action == "save" {
        let saved = match purpose {
            Purpose::Register => {
                save_person(&state, &signed_in, body.clone(), person_id, &key).await.map(|(person, _)| {
                    format!("/persons?kind={}&saved={}", person.kind, crate::pages::url_encode(&person.name))
                })
            }
            Purpose::ChangeAdd | Purpose::ChangeUpdate => {
                let action = if purpose == Purpose::ChangeAdd { "add" } else { "update" };
                let change = crate::changes::ChangeBody {
                    action: action.to_owned(),
                    person_id: id.clone(),
                    person: Some(body.clone()),
                    ..Default::default()
                };
                crate::changes::save(&state, &signed_in, change)
                    .await
                    .map(|item| format!("/changes?saved={}", crate::pages::url_encode(&item.name)))
            }
        };
        return match saved {
            Ok(location) => Redirect::to(&location).into_response(),
            Err(problem) => {
                let (errors, warnings, message) = split_findings(&problem);
                // Warnings not yet accepted leave the check standing: tick them and save again.
                let checked = if warnings.is_empty() { String::new() } else { digest };
                let view = FormState { errors, warnings, error: message, checked, ..FormState::default() };
                render_person(&state, &signed_in, purpose, &id, &body, FormState { idempotency_key: key, ..view }).await
            }
        };
    }
    match check_person(&state, &signed_in, body.clone(), &id).await {
        Ok(reply) => {
            let errors = reply.errors.iter().map(|finding| (finding.field.clone(), finding.message.clone())).collect();
            let warnings = reply
                .warnings
                .iter()
                .map(|finding| (finding.field.clone(), finding.code.clone(), finding.message.clone()))
                .collect();
            let normalized =
                reply.normalized.clone().filter(|_| reply.ok).map(|normalized| {
                    (if normalized.sex == "1" { "男" } else { "女" }.to_owned(), normalized.birth_date)
                });
            let view = FormState {
                message: if reply.ok { "校验通过，可以保存。".into() } else { String::new() },
                error: if reply.ok {
                    String::new()
                } else {
                    "校验未通过，请按提示修改后重新校验。".into()
                },
                checked: if reply.ok { digest } else { String::new() },
                errors,
                warnings,
                normalized,
                idempotency_key: key,
            };
            render_person(&state, &signed_in, purpose, &id, &body, view).await
        }
        Err(problem) => {
            let view = FormState { error: problem.message, ..FormState::default() };
            render_person(&state, &signed_in, purpose, &id, &body, FormState { idempotency_key: key, ..view }).await
        }
    }
}

pub async fn delete_person_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(person_id): Path<String>,
) -> Response {
    let name = get_person(&state, &signed_in, person_id.clone()).await.map(|person| (person.name, person.kind));
    match (name, delete_person(&state, &signed_in, person_id).await) {
        (Ok((name, kind)), Ok(())) => {
            Redirect::to(&format!("/persons?kind={kind}&deleted={}", crate::pages::url_encode(&name))).into_response()
        }
        (_, Err(problem)) | (Err(problem), _) => crate::operators::denied(&state, &signed_in, &problem),
    }
}
