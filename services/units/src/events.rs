//! Identity's events this service acts on: a unit operator's first login creates the unit's draft record.

use kit::consumer::{ConsumerSpec, Event, Handler, HandlerError};
use prost::Message as _;
use proto::events::UnitFirstLogin;
use proto::names::Namespace;
use sqlx::PgConnection;

/// The durable consumer of `unit_first_login` on identity's stream.
pub fn first_login_consumer(namespace: &Namespace) -> ConsumerSpec {
    ConsumerSpec::new(
        namespace.events_stream("identity"),
        namespace.events_filter("identity"),
        namespace.consumer("units", "first_login"),
        namespace.event_subject("identity", "unit_first_login"),
    )
}

/// Creates the draft record; a record that exists already (a second key of the same unit) is left as it is, but for
/// the agency's name where an earlier version did not keep it.
#[derive(Debug)]
pub struct FirstLogin;

impl Handler for FirstLogin {
    async fn handle(&self, transaction: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        let login = UnitFirstLogin::decode(event.payload.as_ref())
            .map_err(|error| HandlerError::Poison(format!("not a UnitFirstLogin: {error}")))?;
        if login.institution_code.is_empty() {
            return Err(HandlerError::Poison("UnitFirstLogin without an institution code".into()));
        }
        // The platform's own work: the unit is not the caller's, there is no caller.
        kit::db::set_scope(transaction, &kit::db::Scope::All).await?;
        sqlx::query(
            "insert into units (institution_code, unit_name, credit_code, unit_type, region_code, agency_code, \
             created_by_event, unit_type_code, agency_name) values ($1, $2, $3, $4, $5, $6, $7, \
             (select code from code_lists where list = 'unit_type' and label = $4 limit 1), $8) \
             on conflict (institution_code) do update set agency_name = excluded.agency_name \
             where units.agency_name = ''",
        )
        .bind(&login.institution_code)
        .bind(&login.unit_name)
        .bind(&login.credit_code)
        .bind(&login.unit_type)
        .bind(&login.region_code)
        .bind(&login.agency_code)
        .bind(&event.id)
        .bind(&login.agency_name)
        .execute(&mut *transaction)
        .await?;
        Ok(())
    }
}
