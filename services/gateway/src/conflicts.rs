//! Stale registrations for agency reviewers on 8443: the JSON API (`listRegistrationConflicts`, `endRegistration`,
//! `getPersonHistory`) and the page where a reviewer sees who else is trying to register a person of its agency's
//! units and ends the stale registration with a reason. Personnel decides; this module carries the caller.

use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use bytes::Bytes;
use minijinja::context;
use minijinja::value::{Serde, Value};
use proto::names::Service;
use proto::personnel::personnel_client::PersonnelClient;
use proto::personnel::{
    EndRegistrationRequest, GetPersonHistoryRequest, ListRegistrationConflictsRequest, RegistrationConflict,
};
use serde::Deserialize;

use crate::AppState;
use crate::enrollment::user;
use crate::error::ApiError;
use crate::keys::rfc3339;
use crate::session::SignedIn;

fn personnel(state: &AppState) -> PersonnelClient<kit::rpc::NatsChannel> {
    PersonnelClient::new(state.platform.channel(Service::Personnel))
}

fn conflict_json(conflict: &RegistrationConflict) -> serde_json::Value {
    serde_json::json!({
        "conflict_id": conflict.conflict_id, "name": conflict.name, "id_number_masked": conflict.id_number_masked,
        "requesting_unit": conflict.requesting_unit, "holding_unit": conflict.holding_unit,
        "holding_person_id": conflict.holding_person_id, "created_at": rfc3339(conflict.created_at),
        "resolved_at": rfc3339(conflict.resolved_at), "resolved_by": conflict.resolved_by,
        "resolution": conflict.resolution,
    })
}

async fn list(state: &AppState, signed_in: &SignedIn) -> Result<Vec<serde_json::Value>, ApiError> {
    let request = ListRegistrationConflictsRequest { caller: signed_in.caller() };
    let reply = personnel(state).list_registration_conflicts(request).await.map_err(ApiError::from)?.into_inner();
    Ok(reply.conflicts.iter().map(conflict_json).collect())
}

async fn end(state: &AppState, signed_in: &SignedIn, id: &str, reason: String) -> Result<serde_json::Value, ApiError> {
    let request = EndRegistrationRequest { caller: signed_in.caller(), conflict_id: id.to_owned(), reason };
    let reply = personnel(state).end_registration(request).await.map_err(ApiError::from)?.into_inner();
    Ok(conflict_json(&reply))
}

/// `listRegistrationConflicts`: GET /api/registration-conflicts.
pub async fn list_api(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    list(&state, &signed_in).await.map(|conflicts| Json(serde_json::json!({ "conflicts": conflicts }))).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EndBody {
    pub reason: String,
}

/// `endRegistration`: POST /api/registration-conflicts/{conflict_id}/end with `{reason}`.
pub async fn end_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let body: EndBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => return ApiError::bad_json(&error).into_response(),
    };
    end(&state, &signed_in, &id, body.reason).await.map(Json).into_response()
}

async fn history(state: &AppState, signed_in: &SignedIn, id: String) -> Result<serde_json::Value, ApiError> {
    let request = GetPersonHistoryRequest { caller: signed_in.caller(), person_id: id };
    let reply = personnel(state).get_person_history(request).await.map_err(ApiError::from)?.into_inner();
    Ok(serde_json::json!({
        "entries": reply.entries.iter().map(|entry| serde_json::json!({
            "person_id": entry.person_id, "institution_code": entry.institution_code, "event": entry.event,
            "actor": entry.actor, "reason": entry.reason, "at": rfc3339(entry.at),
            "declaration_id": entry.declaration_id,
        })).collect::<Vec<_>>(),
    }))
}

/// `getPersonHistory`: GET /api/persons/{person_id}/history, for reviewers.
pub async fn history_api(State(state): State<AppState>, signed_in: SignedIn, Path(id): Path<String>) -> Response {
    history(&state, &signed_in, id).await.map(Json).into_response()
}

/// A person's registrations across units, for reviewers: who registered, approved, changed or ended them, when,
/// and by which declaration.
pub async fn history_page(State(state): State<AppState>, signed_in: SignedIn, Path(id): Path<String>) -> Response {
    if let Err(problem) = signed_in.require(&["agency_reviewer", "province_admin"]) {
        return crate::operators::denied(&state, &signed_in, &problem);
    }
    match history(&state, &signed_in, id).await {
        Ok(history) => state.pages.render(
            "person_history.html",
            context! { section => "review", user => user(&signed_in), csrf => signed_in.session.csrf_token.clone(),
            history => Value::from(Serde(history)) },
        ),
        Err(problem) => crate::operators::denied(&state, &signed_in, &problem),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DoneQuery {
    pub done: String,
}

async fn render(state: &AppState, signed_in: &SignedIn, message: &str, error: &str) -> Response {
    if let Err(problem) = signed_in.require(&["agency_reviewer"]) {
        return crate::operators::denied(state, signed_in, &problem);
    }
    match list(state, signed_in).await {
        Ok(conflicts) => state.pages.render(
            "conflicts.html",
            context! { section => "review", user => user(signed_in), csrf => signed_in.session.csrf_token.clone(),
            conflicts => Value::from(Serde(conflicts)), message => message, error => error },
        ),
        Err(problem) => crate::operators::denied(state, signed_in, &problem),
    }
}

/// 重复参保: the open conflicts of the reviewer's agency.
pub async fn page(State(state): State<AppState>, signed_in: SignedIn, Query(query): Query<DoneQuery>) -> Response {
    let message =
        if query.done == "ended" { "已终止原参保登记，新单位现在可以登记该人员。" } else { "" };
    render(&state, &signed_in, message, "").await
}

pub async fn end_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<EndBody>,
) -> Response {
    match end(&state, &signed_in, &id, form.reason).await {
        Ok(_) => Redirect::to("/review/conflicts?done=ended").into_response(),
        Err(problem) => {
            let message = problem.errors.first().map_or(problem.message.clone(), |error| error.message.clone());
            render(&state, &signed_in, "", &message).await
        }
    }
}
