//! Identity's events this service acts on: a unit operator's first login tells which agency handles the unit, so
//! that a person registered in that unit can be pointed to it from elsewhere.

use kit::consumer::{ConsumerSpec, Event, Handler, HandlerError};
use prost::Message as _;
use proto::events::{DeclarationChanged, UnitFirstLogin};
use proto::names::Namespace;
use sqlx::PgConnection;

/// The durable consumer of `unit_first_login` on identity's stream (units has its own, for the draft record).
pub fn first_login_consumer(namespace: &Namespace) -> ConsumerSpec {
    ConsumerSpec::new(
        namespace.events_stream("identity"),
        namespace.events_filter("identity"),
        namespace.consumer("personnel", "first_login"),
        namespace.event_subject("identity", "unit_first_login"),
    )
}

/// Records the unit's agency; a later event for the same unit (the registry moved it) replaces it.
#[derive(Debug)]
pub struct UnitAgency;

impl Handler for UnitAgency {
    async fn handle(&self, transaction: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        let login = UnitFirstLogin::decode(event.payload.as_ref())
            .map_err(|error| HandlerError::Poison(format!("not a UnitFirstLogin: {error}")))?;
        if login.institution_code.is_empty() || login.agency_code.is_empty() {
            return Err(HandlerError::Poison("UnitFirstLogin without its unit or agency".into()));
        }
        sqlx::query(
            "insert into unit_agencies (institution_code, agency_code, agency_name, unit_type, unit_name, region_code) \
             values ($1, $2, $3, $4, $5, $6) on conflict (institution_code) do update set \
             agency_code = excluded.agency_code, agency_name = excluded.agency_name, unit_type = excluded.unit_type, \
             unit_name = excluded.unit_name, region_code = excluded.region_code",
        )
        .bind(&login.institution_code)
        .bind(&login.agency_code)
        .bind(&login.agency_name)
        .bind(&login.unit_type)
        .bind(&login.unit_name)
        .bind(&login.region_code)
        .execute(&mut *transaction)
        .await?;
        Ok(())
    }
}

/// The durable consumer of units' declaration events: a withdrawn or rejected declaration releases the roster, an
/// approved one takes effect.
pub fn declaration_consumer(namespace: &Namespace) -> ConsumerSpec {
    ConsumerSpec::new(
        namespace.events_stream("units"),
        namespace.events_filter("units"),
        namespace.consumer("personnel", "declarations"),
        namespace.event_subject("units", "declaration.*"),
    )
}

/// Releases the roster of a declaration that was withdrawn or rejected, and applies an approved one. Units also
/// asks for each directly after its commit; this is what makes it certain when that call was lost.
#[derive(Debug)]
pub struct DeclarationOutcome {
    pub people: crate::people::People,
}

impl Handler for DeclarationOutcome {
    async fn handle(&self, _transaction: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        let changed = DeclarationChanged::decode(event.payload.as_ref())
            .map_err(|error| HandlerError::Poison(format!("not a DeclarationChanged: {error}")))?;
        if !matches!(changed.state.as_str(), "withdrawn" | "rejected" | "approved") {
            return Ok(());
        }
        let declaration_id = changed
            .declaration_id
            .parse()
            .map_err(|_| HandlerError::Poison(format!("declaration id {:?}", changed.declaration_id)))?;
        let actor = kit::audit::Actor { name: "system".into(), role: "system".into(), ..Default::default() };
        if changed.state == "approved" {
            let caller = proto::common::Caller { actor: "system".into(), role: "system".into(), ..Default::default() };
            // Applying is idempotent by itself (applied_declarations), so it runs in its own transaction.
            return self
                .people
                .apply(&caller, &changed.institution_code, &changed.declaration_id)
                .await
                .map(|_| ())
                .map_err(|status| HandlerError::Retry(status.message().to_owned()));
        }
        // Releasing is idempotent by itself, so it runs in its own transaction.
        self.people
            .release_on(&actor, &changed.institution_code, declaration_id)
            .await
            .map(|_| ())
            .map_err(|status| HandlerError::Retry(status.message().to_owned()))
    }
}
