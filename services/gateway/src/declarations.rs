//! Declaring and the review on 8443: the JSON API (`declare`, `withdrawDeclaration`, `getDeclaration`,
//! `listReviewQueue`, `getReviewDeclaration`, `claimDeclaration`, `approveDeclaration`, `rejectDeclaration`) and the
//! pages of the manual's 4.2 (单位参保登记申报: 确认申报 and 申报撤回, each confirmed first) and of the agency's
//! review (the queue, oldest first; the declared snapshot with what changed since the last rejection; claim,
//! approve, reject with a reason). Units and personnel decide; this module carries the caller and renders.

use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use bytes::Bytes;
use minijinja::context;
use minijinja::value::{Serde, Value};
use proto::names::Service;
use proto::personnel::GetRosterSnapshotRequest;
use proto::personnel::RosterSnapshot;
use proto::personnel::personnel_client::PersonnelClient;
use proto::units::units_client::UnitsClient;
use proto::units::{
    Declaration, DeclareRequest, GetDeclarationRequest, ListReviewQueueRequest, RejectDeclarationRequest,
    ReviewRequest, WithdrawDeclarationRequest,
};
use serde::Deserialize;

use crate::AppState;
use crate::enrollment::{person_json, unit_json, user};
use crate::error::ApiError;
use crate::keys::rfc3339;
use crate::session::SignedIn;

fn units(state: &AppState) -> UnitsClient<kit::rpc::NatsChannel> {
    UnitsClient::new(state.platform.channel(Service::Units))
}

fn personnel(state: &AppState) -> PersonnelClient<kit::rpc::NatsChannel> {
    PersonnelClient::new(state.platform.channel(Service::Personnel))
}

/// A declaration as the API shows it.
pub fn declaration_json(declaration: &Declaration) -> serde_json::Value {
    serde_json::json!({
        "declaration_id": declaration.declaration_id, "institution_code": declaration.institution_code,
        "unit_name": declaration.unit_name, "agency_code": declaration.agency_code, "state": declaration.state,
        "state_label": declaration.state_label, "created_at": rfc3339(declaration.created_at),
        "declared_at": rfc3339(declaration.declared_at), "declared_by": declaration.declared_by,
        "claimed_by": declaration.claimed_by, "reason": declaration.reason, "unit_number": declaration.unit_number,
        "unit_digest": declaration.unit_digest, "roster_digest": declaration.roster_digest,
        "staff_count": declaration.staff_count, "retiree_pre_reform_count": declaration.retiree_pre_reform_count,
        "retiree_post_reform_count": declaration.retiree_post_reform_count,
        "history": declaration.history.iter().map(|transition| serde_json::json!({
            "from_state": transition.from_state, "to_state": transition.to_state, "to_label": transition.to_label,
            "actor": transition.actor, "role": transition.role, "reason": transition.reason,
            "unit_digest": transition.unit_digest, "roster_digest": transition.roster_digest,
            "at": rfc3339(transition.at),
        })).collect::<Vec<_>>(),
        "unit": declaration.unit_snapshot.as_ref().map(unit_json),
        "accepted_warnings": declaration.accepted_warnings.iter().map(|warning| serde_json::json!({
            "code": warning.code, "accepted_by": warning.accepted_by, "accepted_at": warning.accepted_at,
        })).collect::<Vec<_>>(),
        "previous_rejected_id": declaration.previous_rejected_id,
        "unit_changes": declaration.unit_changes.iter().map(|change| serde_json::json!({
            "field": change.field, "label": change.label, "before": change.before, "after": change.after,
        })).collect::<Vec<_>>(),
        "can_withdraw": declaration.can_withdraw, "can_claim": declaration.can_claim,
        "can_decide": declaration.can_decide, "kind": declaration.kind, "kind_label": declaration.kind_label,
        "add_count": declaration.add_count, "remove_count": declaration.remove_count,
        "update_count": declaration.update_count,
    })
}

fn roster_json(roster: &RosterSnapshot) -> serde_json::Value {
    serde_json::json!({
        "digest": roster.digest, "frozen_at": rfc3339(roster.frozen_at), "staff_count": roster.staff_count,
        "retiree_pre_reform_count": roster.retiree_pre_reform_count,
        "retiree_post_reform_count": roster.retiree_post_reform_count,
        "persons": roster.persons.iter().map(person_json).collect::<Vec<_>>(),
        "changes": roster.changes.iter().map(|change| serde_json::json!({
            "person_id": change.person_id, "name": change.name, "kind_label": change.kind_label,
            "change": change.change, "fields": change.fields,
        })).collect::<Vec<_>>(),
        "kind": roster.kind, "add_count": roster.add_count, "remove_count": roster.remove_count,
        "update_count": roster.update_count,
        "change_items": roster.change_items.iter().map(crate::changes::item_json).collect::<Vec<_>>(),
    })
}

async fn declare(state: &AppState, signed_in: &SignedIn) -> Result<Declaration, ApiError> {
    let request = DeclareRequest { caller: signed_in.caller(), kind: String::new() };
    Ok(units(state).declare(request).await.map_err(ApiError::from)?.into_inner())
}

async fn withdraw(state: &AppState, signed_in: &SignedIn) -> Result<Declaration, ApiError> {
    let request = WithdrawDeclarationRequest { caller: signed_in.caller() };
    Ok(units(state).withdraw_declaration(request).await.map_err(ApiError::from)?.into_inner())
}

/// The caller's own unit's latest declaration (`id` empty), or the one named.
async fn get(state: &AppState, signed_in: &SignedIn, id: &str) -> Result<Declaration, ApiError> {
    let request = GetDeclarationRequest { caller: signed_in.caller(), declaration_id: id.to_owned() };
    Ok(units(state).get_declaration(request).await.map_err(ApiError::from)?.into_inner())
}

/// The frozen roster of a declaration, masked, with the changes since `compare_to`.
async fn roster(state: &AppState, signed_in: &SignedIn, declaration: &Declaration) -> Result<RosterSnapshot, ApiError> {
    let request = GetRosterSnapshotRequest {
        caller: signed_in.caller(),
        declaration_id: declaration.declaration_id.clone(),
        compare_to: declaration.previous_rejected_id.clone(),
        summary_only: false,
    };
    Ok(personnel(state).get_roster_snapshot(request).await.map_err(ApiError::from)?.into_inner())
}

enum ReviewStep {
    Claim,
    Approve,
    Reject(String),
}

async fn review(state: &AppState, signed_in: &SignedIn, id: &str, step: ReviewStep) -> Result<Declaration, ApiError> {
    let caller = signed_in.caller();
    let declaration_id = id.to_owned();
    let mut client = units(state);
    let reply = match step {
        ReviewStep::Claim => client.claim_declaration(ReviewRequest { caller, declaration_id }).await,
        ReviewStep::Approve => client.approve_declaration(ReviewRequest { caller, declaration_id }).await,
        ReviewStep::Reject(reason) => {
            client.reject_declaration(RejectDeclarationRequest { caller, declaration_id, reason }).await
        }
    };
    Ok(reply.map_err(ApiError::from)?.into_inner())
}

// ---- JSON API ----

/// `declare`: POST /api/declaration.
pub async fn declare_api(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    declare(&state, &signed_in).await.map(|declaration| Json(declaration_json(&declaration))).into_response()
}

/// `withdrawDeclaration`: POST /api/declaration/withdraw.
pub async fn withdraw_api(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    withdraw(&state, &signed_in).await.map(|declaration| Json(declaration_json(&declaration))).into_response()
}

/// `getDeclaration`: GET /api/declaration, the caller's own unit's latest declaration.
pub async fn get_api(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    get(&state, &signed_in, "").await.map(|declaration| Json(declaration_json(&declaration))).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct QueueQuery {
    pub state: String,
    pub page: u32,
    pub page_size: u32,
}

async fn queue(state: &AppState, signed_in: &SignedIn, query: &QueueQuery) -> Result<serde_json::Value, ApiError> {
    let request = ListReviewQueueRequest {
        caller: signed_in.caller(),
        state: query.state.clone(),
        page: query.page,
        page_size: query.page_size,
    };
    let reply = units(state).list_review_queue(request).await.map_err(ApiError::from)?.into_inner();
    Ok(serde_json::json!({
        "declarations": reply.declarations.iter().map(declaration_json).collect::<Vec<_>>(),
        "total": reply.total, "page": reply.page, "page_size": reply.page_size,
    }))
}

/// `listReviewQueue`: GET /api/review-queue.
pub async fn queue_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<QueueQuery>,
) -> Response {
    queue(&state, &signed_in, &query).await.map(Json).into_response()
}

async fn review_view(state: &AppState, signed_in: &SignedIn, id: &str) -> Result<serde_json::Value, ApiError> {
    let declaration = get(state, signed_in, id).await?;
    let roster = roster(state, signed_in, &declaration).await?;
    let mut json = declaration_json(&declaration);
    json["roster"] = roster_json(&roster);
    Ok(json)
}

/// `getReviewDeclaration`: GET /api/declarations/{declaration_id}, with the frozen roster (masked) and the
/// changes since the unit's last rejected declaration.
pub async fn review_get_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(declaration_id): Path<String>,
) -> Response {
    review_view(&state, &signed_in, &declaration_id).await.map(Json).into_response()
}

/// `claimDeclaration`: POST /api/declarations/{declaration_id}/claim.
pub async fn claim_api(State(state): State<AppState>, signed_in: SignedIn, Path(id): Path<String>) -> Response {
    review(&state, &signed_in, &id, ReviewStep::Claim).await.map(|d| Json(declaration_json(&d))).into_response()
}

/// `approveDeclaration`: POST /api/declarations/{declaration_id}/approve.
pub async fn approve_api(State(state): State<AppState>, signed_in: SignedIn, Path(id): Path<String>) -> Response {
    review(&state, &signed_in, &id, ReviewStep::Approve).await.map(|d| Json(declaration_json(&d))).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RejectBody {
    pub reason: String,
}

/// `rejectDeclaration`: POST /api/declarations/{declaration_id}/reject with `{reason}`.
pub async fn reject_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let body: RejectBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => return ApiError::bad_json(&error).into_response(),
    };
    review(&state, &signed_in, &id, ReviewStep::Reject(body.reason))
        .await
        .map(|declaration| Json(declaration_json(&declaration)))
        .into_response()
}

// ---- pages ----

fn done_message(done: &str) -> &'static str {
    match done {
        "declared" => "已申报：单位信息和人员信息已锁定，等待经办机构审核。",
        "withdrawn" => "申报已撤回，可以继续修改单位信息和人员信息。",
        "claimed" => "已认领，请审核。",
        "approved" => "已审核通过，单位已参保。",
        "rejected" => "已退回，单位可修改后重新申报。",
        _ => "",
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DoneQuery {
    pub done: String,
}

async fn render_declaration(state: &AppState, signed_in: &SignedIn, message: &str, error: &str) -> Response {
    if let Err(problem) = signed_in.require(&["unit_operator"]) {
        return crate::operators::denied(state, signed_in, &problem);
    }
    let unit = match units(state)
        .get_unit_record(proto::units::GetUnitRecordRequest {
            caller: signed_in.caller(),
            institution_code: String::new(),
        })
        .await
    {
        Ok(reply) => reply.into_inner(),
        Err(status) => return crate::operators::denied(state, signed_in, &ApiError::from(status)),
    };
    // This page is the first declaration's; a change declaration has the 人员变更 page.
    let declaration = match get(state, signed_in, "").await {
        Ok(declaration) if declaration.kind == "change" => None,
        Ok(declaration) => Some(declaration_json(&declaration)),
        Err(problem) if problem.code == "not_declared" => None,
        Err(problem) => return crate::operators::denied(state, signed_in, &problem),
    };
    let persons = personnel(state)
        .list_persons(proto::personnel::ListPersonsRequest {
            caller: signed_in.caller(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .map(|reply| reply.into_inner().total)
        .unwrap_or_default();
    state.pages.render(
        "declaration.html",
        context! { section => "declaration", user => user(signed_in), csrf => signed_in.session.csrf_token.clone(),
        unit => Value::from(Serde(unit_json(&unit))), declaration => Value::from(Serde(declaration)),
        persons => persons, can_declare => unit.state == "draft", message => message, error => error },
    )
}

/// 单位参保登记申报: the unit's state, its declaration's history, 确认申报 and 申报撤回.
pub async fn declaration_page(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<DoneQuery>,
) -> Response {
    render_declaration(&state, &signed_in, done_message(&query.done), "").await
}

pub async fn declare_submit(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    match declare(&state, &signed_in).await {
        Ok(declaration) if declaration.state == "declaring" => Redirect::to("/declaration").into_response(),
        // As in the manual: after declaring, the print screen.
        Ok(_) => Redirect::to("/print?done=declared").into_response(),
        Err(problem) => render_declaration(&state, &signed_in, "", &problem.message).await,
    }
}

pub async fn withdraw_submit(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    match withdraw(&state, &signed_in).await {
        Ok(_) => Redirect::to("/declaration?done=withdrawn").into_response(),
        Err(problem) => render_declaration(&state, &signed_in, "", &problem.message).await,
    }
}

/// The reviewer's queue: its agency's declared and claimed declarations, oldest first.
pub async fn queue_page(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<QueueQuery>,
) -> Response {
    if let Err(problem) = signed_in.require(&["agency_reviewer", "province_admin"]) {
        return crate::operators::denied(&state, &signed_in, &problem);
    }
    match queue(&state, &signed_in, &query).await {
        Ok(list) => state.pages.render(
            "review_queue.html",
            context! { section => "review", user => user(&signed_in), csrf => signed_in.session.csrf_token.clone(),
            list => Value::from(Serde(list)), state_filter => query.state },
        ),
        Err(problem) => crate::operators::denied(&state, &signed_in, &problem),
    }
}

async fn render_review(
    state: &AppState,
    signed_in: &SignedIn,
    id: &str,
    message: &str,
    error: &str,
    reason: &str,
) -> Response {
    if let Err(problem) = signed_in.require(&["agency_reviewer", "province_admin"]) {
        return crate::operators::denied(state, signed_in, &problem);
    }
    match review_view(state, signed_in, id).await {
        Ok(view) => state.pages.render(
            "review.html",
            context! { section => "review", user => user(signed_in), csrf => signed_in.session.csrf_token.clone(),
            documents => Value::from(Serde(crate::printed::documents(state, signed_in, id).await.ok().map(|reply| crate::printed::documents_json(&reply)))),
            d => Value::from(Serde(view)), message => message, error => error, reason => reason,
            codes => Value::from(Serde(crate::enrollment::unit_codes(state).await)), max_reason => 200 },
        ),
        Err(problem) => crate::operators::denied(state, signed_in, &problem),
    }
}

/// A declaration as the reviewer sees it: the declared record and roster, what changed since the last rejection,
/// the accepted warnings, the history, and the reviewer's actions.
pub async fn review_page(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<String>,
    Query(query): Query<DoneQuery>,
) -> Response {
    render_review(&state, &signed_in, &id, done_message(&query.done), "", "").await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReviewForm {
    pub reason: String,
}

async fn review_submit(state: AppState, signed_in: SignedIn, id: String, step: ReviewStep) -> Response {
    let reason = match &step {
        ReviewStep::Reject(reason) => reason.clone(),
        _ => String::new(),
    };
    match review(&state, &signed_in, &id, step).await {
        Ok(declaration) => {
            Redirect::to(&format!("/review/{}?done={}", declaration.declaration_id, declaration.state)).into_response()
        }
        Err(problem) => {
            let message = problem.errors.first().map_or(problem.message.clone(), |error| error.message.clone());
            render_review(&state, &signed_in, &id, "", &message, &reason).await
        }
    }
}

pub async fn claim_submit(State(state): State<AppState>, signed_in: SignedIn, Path(id): Path<String>) -> Response {
    review_submit(state, signed_in, id, ReviewStep::Claim).await
}

pub async fn approve_submit(State(state): State<AppState>, signed_in: SignedIn, Path(id): Path<String>) -> Response {
    review_submit(state, signed_in, id, ReviewStep::Approve).await
}

pub async fn reject_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<ReviewForm>,
) -> Response {
    review_submit(state, signed_in, id, ReviewStep::Reject(form.reason)).await
}
