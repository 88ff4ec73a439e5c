//! 人员变更 on 8443, once a unit's roster was approved: the JSON API (`listRosterChanges`, `saveRosterChange`,
//! `deleteRosterChange`, `declareChanges`; withdrawing is `withdrawDeclaration`, the review the same as for a first
//! declaration) and the pages: the approved roster with 变更 and 减员 beside each person, 增员 by kind through the
//! person form's 校验 and 保存, the open changes, and 确认申报 / 申报撤回 of the change declaration. Personnel
//! checks and keeps the changes, units runs the declaration; this module carries the caller and renders.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use bytes::Bytes;
use minijinja::context;
use minijinja::value::{Serde, Value};
use proto::names::Service;
use proto::personnel::personnel_client::PersonnelClient;
use proto::personnel::{
    DeleteRosterChangeRequest, ListRosterChangesReply, ListRosterChangesRequest, RosterChangeItem,
    SaveRosterChangeRequest,
};
use proto::units::units_client::UnitsClient;
use proto::units::{Declaration, DeclareRequest, WithdrawDeclarationRequest};
use serde::Deserialize;

use crate::AppState;
use crate::declarations::declaration_json;
use crate::enrollment::{
    FormState, ListQuery, PersonBody, PersonForm, Purpose, accepted_boxes, error_map, kind_or_staff, person_json,
    split_findings, user,
};
use crate::error::ApiError;
use crate::keys::rfc3339;
use crate::session::SignedIn;

fn personnel(state: &AppState) -> PersonnelClient<kit::rpc::NatsChannel> {
    PersonnelClient::new(state.platform.channel(Service::Personnel))
}

fn units(state: &AppState) -> UnitsClient<kit::rpc::NatsChannel> {
    UnitsClient::new(state.platform.channel(Service::Units))
}

/// A change as the API takes it: `action` "add", "remove" or "update"; the person for 增员 and 变更 (and the
/// retiree's fields for a retirement); the date and reason for 减员. Accepted warnings go in
/// `person.accepted_warnings`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ChangeBody {
    pub action: String,
    pub person_id: String,
    pub person: Option<PersonBody>,
    pub leave_date: String,
    pub leave_reason: String,
}

/// A change as the API shows it.
pub fn item_json(item: &RosterChangeItem) -> serde_json::Value {
    serde_json::json!({
        "change_id": item.change_id, "action": item.action, "action_label": item.action_label,
        "person_id": item.person_id, "name": item.name, "id_number_masked": item.id_number_masked,
        "kind": item.kind, "kind_label": item.kind_label, "new_kind": item.new_kind,
        "new_kind_label": item.new_kind_label, "leave_date": item.leave_date, "leave_reason": item.leave_reason,
        "leave_reason_label": item.leave_reason_label,
        "fields": item.fields.iter().map(|diff| serde_json::json!({
            "field": diff.field, "label": diff.label, "before": diff.before, "after": diff.after,
        })).collect::<Vec<_>>(),
        "warnings": item.check.as_ref().map(|check| check.warnings.iter().map(|finding| serde_json::json!({
            "field": finding.field, "code": finding.code, "message": finding.message,
        })).collect::<Vec<_>>()).unwrap_or_default(),
        "person": item.person.as_ref().map(person_json),
        "updated_at": rfc3339(item.updated_at), "updated_by": item.updated_by,
    })
}

fn list_json(reply: &ListRosterChangesReply) -> serde_json::Value {
    serde_json::json!({
        "items": reply.items.iter().map(item_json).collect::<Vec<_>>(),
        "enrolled": reply.enrolled, "locked_by": reply.locked_by,
    })
}

fn operator(signed_in: &SignedIn) -> Result<(), ApiError> {
    signed_in.require(&["unit_operator"])
}

pub(crate) async fn save(
    state: &AppState,
    signed_in: &SignedIn,
    body: ChangeBody,
) -> Result<RosterChangeItem, ApiError> {
    operator(signed_in)?;
    let request = SaveRosterChangeRequest {
        caller: signed_in.caller(),
        action: body.action,
        person_id: body.person_id,
        person: body.person.map(PersonBody::into_input),
        leave_date: body.leave_date,
        leave_reason: body.leave_reason,
    };
    Ok(personnel(state).save_roster_change(request).await.map_err(ApiError::from)?.into_inner())
}

async fn list(state: &AppState, signed_in: &SignedIn) -> Result<ListRosterChangesReply, ApiError> {
    operator(signed_in)?;
    let request = ListRosterChangesRequest { caller: signed_in.caller() };
    Ok(personnel(state).list_roster_changes(request).await.map_err(ApiError::from)?.into_inner())
}

async fn delete(state: &AppState, signed_in: &SignedIn, change_id: String) -> Result<(), ApiError> {
    operator(signed_in)?;
    let request = DeleteRosterChangeRequest { caller: signed_in.caller(), change_id };
    personnel(state).delete_roster_change(request).await.map_err(ApiError::from)?;
    Ok(())
}

async fn declare(state: &AppState, signed_in: &SignedIn) -> Result<Declaration, ApiError> {
    let request = DeclareRequest { caller: signed_in.caller(), kind: "change".into() };
    Ok(units(state).declare(request).await.map_err(ApiError::from)?.into_inner())
}

// ---- JSON API ----

/// `listRosterChanges`: GET /api/roster-changes.
pub async fn list_api(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    list(&state, &signed_in).await.map(|reply| Json(list_json(&reply))).into_response()
}

/// `saveRosterChange`: POST /api/roster-changes.
pub async fn save_api(State(state): State<AppState>, signed_in: SignedIn, body: Bytes) -> Response {
    let body: ChangeBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => return ApiError::bad_json(&error).into_response(),
    };
    save(&state, &signed_in, body).await.map(|item| Json(item_json(&item))).into_response()
}

/// `deleteRosterChange`: DELETE /api/roster-changes/{change_id}.
pub async fn delete_api(State(state): State<AppState>, signed_in: SignedIn, Path(id): Path<String>) -> Response {
    delete(&state, &signed_in, id).await.map(|()| axum::http::StatusCode::NO_CONTENT).into_response()
}

/// `declareChanges`: POST /api/change-declaration.
pub async fn declare_api(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    declare(&state, &signed_in).await.map(|declaration| Json(declaration_json(&declaration))).into_response()
}

// ---- pages ----

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PageQuery {
    pub saved: String,
    pub done: String,
    pub page: u32,
    pub kind: String,
}

fn done_message(query: &PageQuery) -> String {
    match query.done.as_str() {
        _ if !query.saved.is_empty() => format!("已保存：{}（申报并经审核通过后生效）", query.saved),
        "deleted" => "已删除该项人员变更。".into(),
        "declared" => "人员变更已申报，等待经办机构审核；审核通过后生效。".into(),
        "withdrawn" => "人员变更申报已撤回，可以继续修改。".into(),
        _ => String::new(),
    }
}

async fn render(state: &AppState, signed_in: &SignedIn, query: &PageQuery, error: &str) -> Response {
    if let Err(problem) = operator(signed_in) {
        return crate::operators::denied(state, signed_in, &problem);
    }
    let changes = match list(state, signed_in).await {
        Ok(reply) => reply,
        Err(problem) => return crate::operators::denied(state, signed_in, &problem),
    };
    let roster_query = ListQuery { page: query.page, page_size: 50, ..ListQuery::default() };
    let roster = match crate::enrollment::list_persons(state, signed_in, &roster_query).await {
        Ok(roster) => roster,
        Err(problem) => return crate::operators::denied(state, signed_in, &problem),
    };
    let request = proto::units::GetDeclarationRequest { caller: signed_in.caller(), declaration_id: String::new() };
    let declaration = match units(state).get_declaration(request).await {
        Ok(reply) => Some(reply.into_inner()).filter(|declaration| declaration.kind == "change"),
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => return crate::operators::denied(state, signed_in, &ApiError::from(status)),
    };
    let active = declaration.as_ref().is_some_and(|d| matches!(d.state.as_str(), "declaring" | "declared" | "claimed"));
    state.pages.render(
        "changes.html",
        context! { section => "changes", user => user(signed_in), csrf => signed_in.session.csrf_token.clone(),
        changes => Value::from(Serde(list_json(&changes))), roster => Value::from(Serde(roster)),
        declaration => Value::from(Serde(declaration.as_ref().map(declaration_json))),
        can_declare => changes.enrolled && changes.locked_by.is_empty() && !changes.items.is_empty() && !active,
        message => done_message(query), error => error },
    )
}

/// 人员变更: the approved roster, the open changes and the change declaration.
pub async fn page(State(state): State<AppState>, signed_in: SignedIn, Query(query): Query<PageQuery>) -> Response {
    render(&state, &signed_in, &query, "").await
}

/// 增员: a new person's form, as for registering.
pub async fn add_page(State(state): State<AppState>, signed_in: SignedIn, Query(query): Query<PageQuery>) -> Response {
    if let Err(problem) = operator(&signed_in) {
        return crate::operators::denied(&state, &signed_in, &problem);
    }
    let form = PersonBody {
        kind: kind_or_staff(&query.kind).to_owned(),
        id_type: "01".into(),
        ethnicity: "01".into(),
        ..PersonBody::default()
    };
    crate::enrollment::render_person(&state, &signed_in, Purpose::ChangeAdd, "", &form, FormState::default()).await
}

pub async fn add_submit(State(state): State<AppState>, signed_in: SignedIn, Form(form): Form<PersonForm>) -> Response {
    crate::enrollment::person_submit(state, signed_in, Purpose::ChangeAdd, None, form).await
}

/// An open 增员's form, to correct it before declaring.
pub async fn edit_add_page(State(state): State<AppState>, signed_in: SignedIn, Path(id): Path<String>) -> Response {
    crate::enrollment::edit_page(state, signed_in, Purpose::ChangeAdd, id).await
}

pub async fn edit_add_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<PersonForm>,
) -> Response {
    crate::enrollment::person_submit(state, signed_in, Purpose::ChangeAdd, Some(id), form).await
}

/// 变更: an approved person's form, to correct fields.
pub async fn update_page(State(state): State<AppState>, signed_in: SignedIn, Path(id): Path<String>) -> Response {
    crate::enrollment::edit_page(state, signed_in, Purpose::ChangeUpdate, id).await
}

pub async fn update_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<PersonForm>,
) -> Response {
    crate::enrollment::person_submit(state, signed_in, Purpose::ChangeUpdate, Some(id), form).await
}

/// The 减员 form: date and reason, and for a retirement the retiree's fields.
#[derive(Debug, Default, Deserialize)]
pub struct RemoveForm {
    #[serde(flatten)]
    pub retiree: PersonBody,
    #[serde(default)]
    pub leave_date: String,
    #[serde(default)]
    pub leave_reason: String,
    #[serde(flatten)]
    pub extra: BTreeMap<String, String>,
}

async fn render_remove(
    state: &AppState,
    signed_in: &SignedIn,
    person_id: &str,
    form: &RemoveForm,
    problem: Option<&ApiError>,
) -> Response {
    if let Err(problem) = operator(signed_in) {
        return crate::operators::denied(state, signed_in, &problem);
    }
    let request = proto::personnel::GetPersonRequest { caller: signed_in.caller(), person_id: person_id.to_owned() };
    let person = match personnel(state).get_person(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => return crate::operators::denied(state, signed_in, &ApiError::from(status)),
    };
    let (errors, warnings, error) = problem.map(split_findings).unwrap_or_default();
    state.pages.render(
        "change_remove.html",
        context! { section => "changes", user => user(signed_in), csrf => signed_in.session.csrf_token.clone(),
        person_id => person_id, name => person.name, kind_label => person.kind_label, staff => person.kind == "staff",
        id_number_masked => person.id_number_masked, joined_unit => person.joined_unit,
        form => Value::from(Serde(serde_json::json!({
            "leave_date": form.leave_date, "leave_reason": form.leave_reason,
            "retirement_category": form.retiree.retirement_category, "monthly_pension": form.retiree.monthly_pension,
            "pay_start_month": form.retiree.pay_start_month, "pay_bank": form.retiree.pay_bank,
        }))),
        codes => Value::from(Serde(crate::enrollment::person_codes(state).await)),
        errors => error_map(&errors), error_list => errors, warnings => warnings, error => error },
    )
}

/// 减员: an approved person leaves on a date for a reason.
pub async fn remove_page(State(state): State<AppState>, signed_in: SignedIn, Path(id): Path<String>) -> Response {
    render_remove(&state, &signed_in, &id, &RemoveForm::default(), None).await
}

pub async fn remove_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<RemoveForm>,
) -> Response {
    let mut retiree = form.retiree.clone();
    retiree.accepted_warnings = accepted_boxes(&form.extra);
    let body = ChangeBody {
        action: "remove".into(),
        person_id: id.clone(),
        person: Some(retiree),
        leave_date: form.leave_date.clone(),
        leave_reason: form.leave_reason.clone(),
    };
    match save(&state, &signed_in, body).await {
        Ok(item) => Redirect::to(&format!("/changes?saved={}", crate::pages::url_encode(&item.name))).into_response(),
        Err(problem) => render_remove(&state, &signed_in, &id, &form, Some(&problem)).await,
    }
}

pub async fn delete_submit(State(state): State<AppState>, signed_in: SignedIn, Path(id): Path<String>) -> Response {
    match delete(&state, &signed_in, id).await {
        Ok(()) => Redirect::to("/changes?done=deleted").into_response(),
        Err(problem) => render(&state, &signed_in, &PageQuery::default(), &problem.message).await,
    }
}

pub async fn declare_submit(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    match declare(&state, &signed_in).await {
        Ok(declaration) if declaration.state == "declaring" => Redirect::to("/changes").into_response(),
        // As for a first declaration: after declaring, the print screen with the change form.
        Ok(_) => Redirect::to("/print?done=declared").into_response(),
        Err(problem) => render(&state, &signed_in, &PageQuery::default(), &problem.message).await,
    }
}

pub async fn withdraw_submit(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    let request = WithdrawDeclarationRequest { caller: signed_in.caller() };
    match units(&state).withdraw_declaration(request).await {
        Ok(_) => Redirect::to("/changes?done=withdrawn").into_response(),
        Err(status) => render(&state, &signed_in, &PageQuery::default(), &ApiError::from(status).message).await,
    }
}
