//! The documents of declarations: rendered once when units reports a declaration declared (the declared snapshots
//! read over NATS RPC, never the live roster), stored sealed with their SHA-256 in the same transaction as the
//! event's inbox record, listed and read back in chunks by who may see them (every download audited), and verified
//! against what was declared.

use std::collections::BTreeMap;
use std::sync::Arc;

use kit::audit::{self, Actor, Outcome};
use kit::consumer::{ConsumerSpec, Event, Handler, HandlerError};
use kit::convert::{hex, timestamp};
use kit::db::Scope;
use kit::faults::Faults;
use kit::rpc::NatsChannel;
use kit::sealing::Sealer;
use kit::status::refuse;
use prost::Message as _;
use proto::common::Caller;
use proto::events::DeclarationChanged;
use proto::names::Namespace;
use proto::personnel::personnel_client::PersonnelClient;
use proto::printing::{Document, DocumentChunk, ListDocumentsReply, Verification};
use proto::units::units_client::UnitsClient;
use sha2::{Digest as _, Sha256};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tonic::{Code, Status};

use crate::render::{CHANGE_KINDS, KINDS, Renderer, Snapshot};

/// The largest chunk a read returns: well under NATS's 1 MiB message.
pub const CHUNK: usize = 512 * 1024;

/// The sealed column of documents, for `pension keys rotate`.
pub const DOCUMENTS_SEALED: kit::sealing::SealedTable = kit::sealing::SealedTable {
    table: "documents",
    key: "document_id",
    key_type: "uuid",
    version: "key_version",
    sealed: &["content_sealed"],
};

/// What the documents need.
#[derive(Debug, Clone)]
pub struct Documents {
    pub pool: PgPool,
    pub sealer: Sealer,
    pub renderer: Arc<Renderer>,
    pub units: UnitsClient<NatsChannel>,
    pub personnel: PersonnelClient<NatsChannel>,
    /// The public verification page, e.g. `https://enroll.example.gov.cn/verify`.
    pub verify_url: String,
    pub faults: Faults,
}

/// The digest printed in the QR code: of the declared record's and the roster's digests together, so one code
/// vouches for every form of the declaration.
pub fn snapshot_digest(unit_digest: &str, roster_digest: &str) -> String {
    hex(&Sha256::digest(format!("{unit_digest}:{roster_digest}").as_bytes()))
}

fn beijing_date(at: OffsetDateTime) -> String {
    let beijing = time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC);
    at.to_offset(beijing).date().to_string()
}

/// The durable consumer of units' declaration events.
pub fn declaration_consumer(namespace: &Namespace) -> ConsumerSpec {
    ConsumerSpec::new(
        namespace.events_stream("units"),
        namespace.events_filter("units"),
        namespace.consumer("printing", "declarations"),
        namespace.event_subject("units", "declaration.*"),
    )
}

fn system() -> Option<Caller> {
    Some(Caller { actor: "printing".into(), role: "system".into(), ..Caller::default() })
}

/// A passing failure of a service asked for the snapshots: the event comes again.
fn retry(what: &str, status: &Status) -> HandlerError {
    HandlerError::Retry(format!("{what}: {:?} {}", status.code(), status.message()))
}

impl Handler for Documents {
    async fn handle(&self, transaction: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        let changed = DeclarationChanged::decode(event.payload.as_ref())
            .map_err(|error| HandlerError::Poison(format!("not a DeclarationChanged: {error}")))?;
        let declaration_id: uuid::Uuid = changed
            .declaration_id
            .parse()
            .map_err(|_| HandlerError::Poison(format!("declaration id {:?}", changed.declaration_id)))?;
        kit::db::set_scope(transaction, &Scope::All).await?;
        if changed.state != "declared" {
            sqlx::query("update printed_declarations set state = $2, updated_at = now() where declaration_id = $1")
                .bind(declaration_id)
                .bind(&changed.state)
                .execute(&mut *transaction)
                .await?;
            return Ok(());
        }
        let rendered: Option<Option<OffsetDateTime>> =
            sqlx::query_scalar("select rendered_at from printed_declarations where declaration_id = $1")
                .bind(declaration_id)
                .fetch_optional(&mut *transaction)
                .await?;
        if matches!(rendered, Some(Some(_))) {
            return Ok(());
        }
        self.print(transaction, declaration_id, &changed).await
    }
}

impl Documents {
    /// Renders every form of a declared declaration and stores them, in the event's transaction.
    async fn print(
        &self,
        transaction: &mut PgConnection,
        declaration_id: uuid::Uuid,
        changed: &DeclarationChanged,
    ) -> Result<(), HandlerError> {
        let declaration = self
            .units
            .clone()
            .get_declaration(proto::units::GetDeclarationRequest {
                caller: system(),
                declaration_id: declaration_id.to_string(),
            })
            .await
            .map_err(|status| retry("units", &status))?
            .into_inner();
        let roster = self
            .personnel
            .clone()
            .get_roster_snapshot(proto::personnel::GetRosterSnapshotRequest {
                caller: system(),
                declaration_id: declaration_id.to_string(),
                compare_to: String::new(),
                summary_only: false,
            })
            .await
            .map_err(|status| retry("personnel", &status))?
            .into_inner();
        let codes = self.code_lists().await?;
        let declared_at = declaration
            .declared_at
            .and_then(|at| OffsetDateTime::from_unix_timestamp(at.seconds).ok())
            .unwrap_or_else(OffsetDateTime::now_utc);
        let digest = snapshot_digest(&declaration.unit_digest, &roster.digest);
        let snapshot = Snapshot {
            declaration_id: declaration_id.to_string(),
            declared_on: beijing_date(declared_at),
            unit: declaration.unit_snapshot.clone().unwrap_or_default(),
            agency_name: declaration.unit_snapshot.as_ref().map(|unit| unit.agency_name.clone()).unwrap_or_default(),
            persons: roster.persons,
            change_items: roster.change_items,
            codes,
            verify_url: format!("{}/{declaration_id}/{digest}", self.verify_url.trim_end_matches('/')),
        };
        let renderer = self.renderer.clone();
        // A first declaration prints the unit form and the rosters; a change declaration its 增减变动表.
        let (kinds, bundle_title) = if declaration.kind == "change" {
            (&CHANGE_KINDS[..], "人员增减变动表（一键打印）")
        } else {
            (&KINDS[..], "参保登记表（一键打印）")
        };
        // Rendering is CPU work: off the async threads.
        let documents = tokio::task::spawn_blocking(move || {
            let mut documents = Vec::new();
            for (kind, title) in kinds {
                documents.push((*kind, (*title).to_owned(), renderer.render(&snapshot, &[kind])?));
            }
            let all: Vec<&str> = kinds.iter().map(|(kind, _)| *kind).collect();
            documents.push(("bundle", bundle_title.to_owned(), renderer.render(&snapshot, &all)?));
            Ok::<_, crate::render::RenderError>(documents)
        })
        .await
        .map_err(|error| HandlerError::Retry(format!("rendering stopped: {error}")))?
        .map_err(|error| {
            tracing::error!(%error, %declaration_id, "cannot render the forms");
            HandlerError::Retry(error.to_string())
        })?;
        self.faults.hit("render.before_store").map_err(|status| HandlerError::Retry(status.message().to_owned()))?;

        sqlx::query(
            "insert into printed_declarations (declaration_id, institution_code, agency_code, unit_name, state, \
             unit_digest, roster_digest, declared_at, rendered_at) values ($1, $2, $3, $4, 'declared', $5, $6, $7, now()) \
             on conflict (declaration_id) do update set rendered_at = now()",
        )
        .bind(declaration_id)
        .bind(&changed.institution_code)
        .bind(&changed.agency_code)
        .bind(&declaration.unit_name)
        .bind(&declaration.unit_digest)
        .bind(&roster.digest)
        .bind(declared_at)
        .execute(&mut *transaction)
        .await?;
        for (kind, title, rendered) in documents {
            let sha256 = hex(&Sha256::digest(&rendered.pdf));
            sqlx::query(
                "insert into documents (document_id, declaration_id, kind, title, pages, size, sha256, content_sealed, \
                 key_version) values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict (declaration_id, kind) do nothing",
            )
            .bind(uuid::Uuid::now_v7())
            .bind(declaration_id)
            .bind(kind)
            .bind(&title)
            .bind(i32::try_from(rendered.pages).unwrap_or(i32::MAX))
            .bind(i64::try_from(rendered.pdf.len()).unwrap_or(i64::MAX))
            .bind(&sha256)
            .bind(self.sealer.seal_bytes(&rendered.pdf))
            .bind(self.sealer.version())
            .execute(&mut *transaction)
            .await?;
        }
        let actor = Actor { name: "printing".into(), role: "system".into(), ..Actor::default() };
        let object = format!("declaration:{declaration_id}");
        let record = audit::Record {
            actor: &actor,
            action: "documents.render",
            object: &object,
            outcome: Outcome::Success,
            detail: serde_json::json!({ "unit": changed.institution_code }),
        };
        audit::append(transaction, &record).await?;
        tracing::info!(%declaration_id, "registration forms rendered");
        Ok(())
    }

    /// Units' and personnel's code lists, to print labels for codes.
    async fn code_lists(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>, HandlerError> {
        let mut codes: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let units = self
            .units
            .clone()
            .list_unit_codes(proto::units::ListUnitCodesRequest {})
            .await
            .map_err(|status| retry("units", &status))?
            .into_inner();
        for list in units.lists {
            codes.entry(list.name).or_default().extend(list.codes.into_iter().map(|code| (code.code, code.label)));
        }
        let personnel = self
            .personnel
            .clone()
            .list_codes(proto::personnel::ListCodesRequest {})
            .await
            .map_err(|status| retry("personnel", &status))?
            .into_inner();
        for list in personnel.lists {
            codes.entry(list.name).or_default().extend(list.codes.into_iter().map(|code| (code.code, code.label)));
        }
        Ok(codes)
    }

    fn scope_of(caller: &Caller) -> Result<Scope, Status> {
        match caller.role.as_str() {
            "unit_operator" if !caller.institution_code.is_empty() => Ok(Scope::unit(&caller.institution_code)),
            "agency_reviewer" if !caller.agency_code.is_empty() => {
                Ok(Scope::Agencies(vec![caller.agency_code.clone()]))
            }
            "province_admin" => Ok(Scope::All),
            _ => Err(refuse(Code::PermissionDenied, "forbidden", "无权查看登记表")),
        }
    }

    /// `ListDocuments`.
    pub async fn list(&self, caller: &Caller, declaration_id: &str) -> Result<ListDocumentsReply, Status> {
        let scope = Self::scope_of(caller)?;
        let not_found = || refuse(Code::NotFound, "documents_not_found", "没有找到该申报的登记表");
        let mut transaction = kit::db::begin_scoped(&self.pool, &scope).await.map_err(kit::db::status)?;
        let row: Option<(uuid::Uuid, String, String, Option<OffsetDateTime>)> = match declaration_id.trim() {
            "" if caller.role == "unit_operator" => sqlx::query_as(
                "select declaration_id, unit_name, state, rendered_at from printed_declarations \
                 where institution_code = $1 order by declared_at desc limit 1",
            )
            .bind(&caller.institution_code)
            .fetch_optional(&mut *transaction)
            .await
            .map_err(kit::db::status)?,
            raw => {
                let id: uuid::Uuid = raw.parse().map_err(|_| not_found())?;
                sqlx::query_as(
                    "select declaration_id, unit_name, state, rendered_at from printed_declarations \
                     where declaration_id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *transaction)
                .await
                .map_err(kit::db::status)?
            }
        };
        let Some((declaration_id, unit_name, state, rendered_at)) = row else {
            transaction.commit().await.map_err(kit::db::status)?;
            return Err(not_found());
        };
        let documents: Vec<DocumentRow> = sqlx::query_as(
            "select document_id, kind, title, pages, size, sha256, rendered_at from documents \
             where declaration_id = $1",
        )
        .bind(declaration_id)
        .fetch_all(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        let order = |kind: &str| KINDS.iter().position(|(known, _)| *known == kind).unwrap_or(KINDS.len());
        let mut documents: Vec<Document> = documents.into_iter().map(DocumentRow::into_document).collect();
        documents.sort_by_key(|document| order(&document.kind));
        Ok(ListDocumentsReply {
            declaration_id: declaration_id.to_string(),
            unit_name,
            state,
            rendered: rendered_at.is_some(),
            documents,
        })
    }

    /// `ReadDocument`: a chunk from `offset`; the first chunk's read is audited as the download.
    pub async fn read(&self, caller: &Caller, document_id: &str, offset: u64) -> Result<DocumentChunk, Status> {
        let scope = Self::scope_of(caller)?;
        let not_found = || refuse(Code::NotFound, "document_not_found", "没有找到该登记表");
        let document_id: uuid::Uuid = document_id.trim().parse().map_err(|_| not_found())?;
        let mut transaction = kit::db::begin_scoped(&self.pool, &scope).await.map_err(kit::db::status)?;
        let row: Option<(DocumentRow, Vec<u8>, i32, uuid::Uuid)> = sqlx::query_as::<_, SealedRow>(
            "select document_id, kind, title, pages, size, sha256, rendered_at, content_sealed, key_version, \
             declaration_id from documents where document_id = $1",
        )
        .bind(document_id)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(kit::db::status)?
        .map(SealedRow::split);
        let Some((row, sealed, version, declaration_id)) = row else {
            transaction.commit().await.map_err(kit::db::status)?;
            return Err(not_found());
        };
        if offset == 0 {
            let actor = Actor::of(caller);
            let object = format!("document:{document_id}");
            let record = audit::Record {
                actor: &actor,
                action: "document.download",
                object: &object,
                outcome: Outcome::Success,
                detail: serde_json::json!({ "declaration": declaration_id, "kind": row.kind }),
            };
            audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
        }
        transaction.commit().await.map_err(kit::db::status)?;
        let pdf = self.sealer.open_bytes(version, &sealed).map_err(|error| {
            tracing::error!(%error, %document_id, "a stored document does not open");
            Status::internal("internal error")
        })?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(pdf.len());
        let end = start.saturating_add(CHUNK).min(pdf.len());
        Ok(DocumentChunk { document: Some(row.into_document()), offset, data: pdf[start..end].to_vec() })
    }

    /// `VerifyDocument`: public; says only whether the digest is the declaration's, and if so whose and when.
    pub async fn verify(&self, declaration_id: &str, digest: &str) -> Result<Verification, Status> {
        let Ok(declaration_id) = declaration_id.trim().parse::<uuid::Uuid>() else {
            return Ok(Verification::default());
        };
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::All).await.map_err(kit::db::status)?;
        let row: Option<(String, String, String, OffsetDateTime, String)> = sqlx::query_as(
            "select unit_digest, roster_digest, unit_name, declared_at, state from printed_declarations \
             where declaration_id = $1",
        )
        .bind(declaration_id)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        let Some((unit_digest, roster_digest, unit_name, declared_at, state)) = row else {
            return Ok(Verification::default());
        };
        let digest = digest.trim().to_ascii_lowercase();
        let snapshot = if digest == snapshot_digest(&unit_digest, &roster_digest) {
            "declaration"
        } else if digest == unit_digest {
            "unit_record"
        } else if digest == roster_digest {
            "roster"
        } else {
            return Ok(Verification::default());
        };
        Ok(Verification {
            matches: true,
            snapshot: snapshot.to_owned(),
            unit_name,
            declared_at: Some(timestamp(declared_at)),
            state,
        })
    }
}

#[derive(sqlx::FromRow)]
struct DocumentRow {
    document_id: uuid::Uuid,
    kind: String,
    title: String,
    pages: i32,
    size: i64,
    sha256: String,
    rendered_at: OffsetDateTime,
}

impl DocumentRow {
    fn into_document(self) -> Document {
        Document {
            document_id: self.document_id.to_string(),
            kind: self.kind,
            title: self.title,
            pages: u32::try_from(self.pages).unwrap_or(0),
            size: u64::try_from(self.size).unwrap_or(0),
            sha256: self.sha256,
            rendered_at: Some(timestamp(self.rendered_at)),
        }
    }
}

#[derive(sqlx::FromRow)]
struct SealedRow {
    document_id: uuid::Uuid,
    kind: String,
    title: String,
    pages: i32,
    size: i64,
    sha256: String,
    rendered_at: OffsetDateTime,
    content_sealed: Vec<u8>,
    key_version: i32,
    declaration_id: uuid::Uuid,
}

impl SealedRow {
    fn split(self) -> (DocumentRow, Vec<u8>, i32, uuid::Uuid) {
        let row = DocumentRow {
            document_id: self.document_id,
            kind: self.kind,
            title: self.title,
            pages: self.pages,
            size: self.size,
            sha256: self.sha256,
            rendered_at: self.rendered_at,
        };
        (row, self.content_sealed, self.key_version, self.declaration_id)
    }
}
