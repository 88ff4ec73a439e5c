//! API clients (接口客户端): the systems of other agencies that call the agency API on the gateway's port 50443. The
//! province admin creates a client, grants it scopes, and gives it a certificate — issued by the platform's CA from
//! the agency's CSR (or a generated key pair), or issued by a configured agency CA and registered here. On every
//! connection the gateway asks [`ApiClients::authenticate`] who a presented certificate belongs to; the answer is
//! the only way a certificate becomes a client, and every call is audited here through [`ApiClients::record_call`].

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use kit::audit::{self, Actor, Outcome};
use kit::status::{Violation, invalid, refuse};
use proto::identity::{
    ApiClient, ApiClientCertificate, AuthenticatedApiClient, IssuedApiClientCertificate, ScopeDescription,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Deserialize;
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Code, Status};

use crate::ca::{self, PresentedError, Subject};
use crate::certificates::{Certificates, KeySource};
use crate::keys::timestamp;

/// The scopes a client can be granted, with what each allows.
pub const SCOPES: [(&str, &str); 4] = [
    ("persons:read", "按身份证号码查询人员参保状态（参保单位、人员类别、是否已申报或审核通过）"),
    ("units:read", "按地区、经办机构或状态分页查询参保单位及其申报状态"),
    ("events:read", "订阅平台事件：密钥制作、单位申报/撤回/审核通过/退回、人员参保与终止"),
    ("registry:write", "维护编制通数据：新增、修改、撤销机构"),
];

/// Calls per minute of a client created without a rate.
pub const DEFAULT_CALLS_PER_MINUTE: u32 = 600;

/// The `identity.api_clients` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ApiClientsConfig {
    /// Root certificates (PEM files) of agency CAs whose certificates the province admin may register to clients,
    /// besides the platform's own CA.
    pub agency_ca_files: Vec<PathBuf>,
}

/// What the API client operations need.
#[derive(Debug, Clone)]
pub struct ApiClients {
    pub certificates: Certificates,
    /// DER of each configured agency CA.
    pub agency_roots: Arc<Vec<Vec<u8>>>,
}

/// Loads the configured agency CA roots.
pub fn load_agency_roots(config: &ApiClientsConfig) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut roots = Vec::new();
    for path in &config.agency_ca_files {
        let certificates = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("identity.api_clients.agency_ca_files: cannot read {}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("identity.api_clients.agency_ca_files: {} is not PEM", path.display()))?;
        anyhow::ensure!(!certificates.is_empty(), "identity.api_clients.agency_ca_files: {} is empty", path.display());
        roots.extend(certificates.into_iter().map(|der| der.to_vec()));
    }
    Ok(roots)
}

/// The settings of a client as the admin gives them, checked.
pub struct ClientSettings {
    pub display_name: String,
    pub scopes: Vec<String>,
    pub calls_per_minute: u32,
}

/// Checks a client id: what the audit log and the certificate's subject will name the client by.
pub fn check_client_id(client_id: &str, violations: &mut Vec<Violation>) {
    let valid = (3..=40).contains(&client_id.len())
        && client_id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !client_id.starts_with('-')
        && !client_id.ends_with('-');
    if !valid {
        violations.push(Violation::new(
            "client_id",
            "invalid_client_id",
            "客户端标识应为 3–40 位小写字母、数字或“-”，且不以“-”开头或结尾，例如 finance-province",
        ));
    }
}

/// Checks the settings; every fault at once.
pub fn check_settings(
    display_name: &str,
    scopes: &[String],
    calls_per_minute: u32,
    violations: &mut Vec<Violation>,
) -> ClientSettings {
    let display_name = validators::text::normalize_name(display_name);
    if display_name.is_empty() || display_name.chars().count() > 100 {
        violations.push(Violation::new("display_name", "invalid_display_name", "请填写部门名称（至多 100 个字）"));
    }
    let mut granted = Vec::new();
    for scope in scopes.iter().map(|scope| scope.trim()).filter(|scope| !scope.is_empty()) {
        if !SCOPES.iter().any(|(known, _)| *known == scope) {
            violations.push(Violation::new(
                "scopes",
                "unknown_scope",
                format!("未知的权限范围“{scope}”：可选 persons:read、units:read、events:read、registry:write"),
            ));
        } else if !granted.iter().any(|granted: &String| granted == scope) {
            granted.push(scope.to_owned());
        }
    }
    granted.sort_by_key(|scope| SCOPES.iter().position(|(known, _)| known == scope));
    let calls_per_minute = if calls_per_minute == 0 { DEFAULT_CALLS_PER_MINUTE } else { calls_per_minute };
    if calls_per_minute > 100_000 {
        violations.push(Violation::new("calls_per_minute", "invalid_rate", "每分钟调用次数应在 1–100000 之间"));
    }
    ClientSettings { display_name, scopes: granted, calls_per_minute }
}

pub fn scope_descriptions() -> Vec<ScopeDescription> {
    SCOPES
        .iter()
        .map(|(scope, description)| ScopeDescription { scope: (*scope).into(), description: (*description).into() })
        .collect()
}

#[derive(sqlx::FromRow)]
struct ClientRow {
    client_id: String,
    display_name: String,
    scopes: Vec<String>,
    state: String,
    calls_per_minute: i32,
    created_at: OffsetDateTime,
    created_by: String,
    updated_at: OffsetDateTime,
}

impl ClientRow {
    fn into_client(self, certificates: Vec<ApiClientCertificate>) -> ApiClient {
        ApiClient {
            client_id: self.client_id,
            display_name: self.display_name,
            scopes: self.scopes,
            state: self.state,
            calls_per_minute: u32::try_from(self.calls_per_minute).unwrap_or_default(),
            created_at: Some(timestamp(self.created_at)),
            created_by: self.created_by,
            updated_at: Some(timestamp(self.updated_at)),
            certificates,
        }
    }
}

#[derive(sqlx::FromRow)]
struct CertificateRow {
    client_id: String,
    serial: String,
    fingerprint: Vec<u8>,
    origin: String,
    subject: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    state: String,
    revoked_at: Option<OffsetDateTime>,
    revocation_reason: Option<String>,
    pem: String,
}

impl CertificateRow {
    fn into_certificate(self) -> ApiClientCertificate {
        ApiClientCertificate {
            client_id: self.client_id,
            serial: self.serial,
            fingerprint: ca::hex_upper(&self.fingerprint),
            origin: self.origin,
            subject: self.subject,
            not_before: Some(timestamp(self.not_before)),
            not_after: Some(timestamp(self.not_after)),
            state: self.state,
            revoked_at: self.revoked_at.map(timestamp),
            revocation_reason: self.revocation_reason.unwrap_or_default(),
            pem: self.pem,
        }
    }
}

macro_rules! select_client {
    () => {
        "select client_id, display_name, scopes, state, calls_per_minute, created_at, created_by, updated_at \
         from api_clients "
    };
}

macro_rules! select_certificate {
    () => {
        "select client_id, serial, fingerprint, origin, subject, not_before, not_after, state, revoked_at, \
         revocation_reason, pem from api_client_certificates "
    };
}

fn client_not_found(client_id: &str) -> Status {
    refuse(Code::NotFound, "client_not_found", format!("没有标识为 {client_id} 的接口客户端"))
}

fn unauthenticated(reason: &str, message: &str) -> Status {
    refuse(Code::Unauthenticated, reason, message)
}

impl ApiClients {
    fn pool(&self) -> &sqlx::PgPool {
        &self.certificates.keys.pool
    }

    /// Audits a change in its transaction.
    async fn audit(
        transaction: &mut PgConnection,
        actor: &Actor,
        action: &str,
        object: &str,
        detail: serde_json::Value,
    ) -> Result<(), Status> {
        let record = audit::Record { actor, action, object, outcome: Outcome::Success, detail };
        audit::append(transaction, &record).await.map(|_| ()).map_err(kit::db::status)
    }

    pub async fn create(&self, actor: &Actor, client_id: &str, settings: ClientSettings) -> Result<ApiClient, Status> {
        let mut transaction = self.pool().begin().await.map_err(kit::db::status)?;
        let inserted = sqlx::query(
            "insert into api_clients (client_id, display_name, scopes, calls_per_minute, created_by, updated_by) \
             values ($1, $2, $3, $4, $5, $5) on conflict (client_id) do nothing",
        )
        .bind(client_id)
        .bind(&settings.display_name)
        .bind(&settings.scopes)
        .bind(i32::try_from(settings.calls_per_minute).unwrap_or(i32::MAX))
        .bind(&actor.name)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?
        .rows_affected();
        if inserted == 0 {
            return Err(invalid(vec![Violation::new(
                "client_id",
                "client_exists",
                format!("标识 {client_id} 已被另一个接口客户端使用"),
            )]));
        }
        let object = format!("api_client:{client_id}");
        let detail = serde_json::json!({ "display_name": settings.display_name, "scopes": settings.scopes,
            "calls_per_minute": settings.calls_per_minute });
        Self::audit(&mut transaction, actor, "api_client.create", &object, detail).await?;
        let client = self.get_in(&mut transaction, client_id).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(client)
    }

    pub async fn update(
        &self,
        actor: &Actor,
        client_id: &str,
        settings: ClientSettings,
        state: &str,
    ) -> Result<ApiClient, Status> {
        let mut transaction = self.pool().begin().await.map_err(kit::db::status)?;
        let before: Option<(Vec<String>, String)> =
            sqlx::query_as("select scopes, state from api_clients where client_id = $1 for update")
                .bind(client_id)
                .fetch_optional(&mut *transaction)
                .await
                .map_err(kit::db::status)?;
        let Some((scopes_before, state_before)) = before else {
            return Err(client_not_found(client_id));
        };
        sqlx::query(
            "update api_clients set display_name = $2, scopes = $3, calls_per_minute = $4, state = $5, \
             updated_at = now(), updated_by = $6 where client_id = $1",
        )
        .bind(client_id)
        .bind(&settings.display_name)
        .bind(&settings.scopes)
        .bind(i32::try_from(settings.calls_per_minute).unwrap_or(i32::MAX))
        .bind(state)
        .bind(&actor.name)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let object = format!("api_client:{client_id}");
        let detail = serde_json::json!({
            "scopes": { "from": scopes_before, "to": settings.scopes },
            "state": { "from": state_before, "to": state },
            "calls_per_minute": settings.calls_per_minute,
            "display_name": settings.display_name,
        });
        Self::audit(&mut transaction, actor, "api_client.update", &object, detail).await?;
        let client = self.get_in(&mut transaction, client_id).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(client)
    }

    async fn get_in(&self, connection: &mut PgConnection, client_id: &str) -> Result<ApiClient, Status> {
        let row: Option<ClientRow> = sqlx::query_as(concat!(select_client!(), "where client_id = $1"))
            .bind(client_id)
            .fetch_optional(&mut *connection)
            .await
            .map_err(kit::db::status)?;
        let row = row.ok_or_else(|| client_not_found(client_id))?;
        let certificates: Vec<CertificateRow> =
            sqlx::query_as(concat!(select_certificate!(), "where client_id = $1 order by added_at desc"))
                .bind(client_id)
                .fetch_all(&mut *connection)
                .await
                .map_err(kit::db::status)?;
        Ok(row.into_client(certificates.into_iter().map(CertificateRow::into_certificate).collect()))
    }

    pub async fn list(&self) -> Result<Vec<ApiClient>, Status> {
        let rows: Vec<ClientRow> = sqlx::query_as(concat!(select_client!(), "order by client_id"))
            .fetch_all(self.pool())
            .await
            .map_err(kit::db::status)?;
        let certificates: Vec<CertificateRow> =
            sqlx::query_as(concat!(select_certificate!(), "order by added_at desc"))
                .fetch_all(self.pool())
                .await
                .map_err(kit::db::status)?;
        let mut by_client: std::collections::HashMap<String, Vec<ApiClientCertificate>> =
            std::collections::HashMap::new();
        for certificate in certificates {
            by_client.entry(certificate.client_id.clone()).or_default().push(certificate.into_certificate());
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                let certificates = by_client.remove(&row.client_id).unwrap_or_default();
                row.into_client(certificates)
            })
            .collect())
    }

    /// Signs a certificate for the client with the platform's CA; its subject names the client.
    pub async fn issue_certificate(
        &self,
        actor: &Actor,
        client_id: &str,
        csr_pem: &str,
    ) -> Result<IssuedApiClientCertificate, Status> {
        let ca = self.certificates.ca()?;
        let key = KeySource::from_request(csr_pem)?;
        let mut transaction = self.pool().begin().await.map_err(kit::db::status)?;
        let display_name: Option<String> =
            sqlx::query_scalar("select display_name from api_clients where client_id = $1 for update")
                .bind(client_id)
                .fetch_optional(&mut *transaction)
                .await
                .map_err(kit::db::status)?;
        let display_name = display_name.ok_or_else(|| client_not_found(client_id))?;
        let subject = Subject {
            common_name: client_id.to_owned(),
            organization: display_name,
            organizational_unit: "api_client".to_owned(),
        };
        let made = key.sign(ca, &subject)?;
        self.insert_certificate(
            &mut transaction,
            client_id,
            &made.der,
            &made.serial,
            "platform",
            &made.subject,
            (made.not_before, made.not_after),
            &made.pem,
            actor,
        )
        .await?;
        let object = format!("api_client:{client_id}");
        let detail = serde_json::json!({ "serial": made.serial, "not_after": made.not_after.to_string(),
            "generated_key": matches!(key, KeySource::Generated(_)) });
        Self::audit(&mut transaction, actor, "api_client.certificate_issue", &object, detail).await?;
        let certificate = self.certificate_in(&mut transaction, &ca::fingerprint(&made.der)).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(IssuedApiClientCertificate {
            certificate: Some(certificate),
            ca_certificate_pem: ca.certificate_pem().to_owned(),
            private_key_pem: match &key {
                KeySource::Generated(pair) => pair.serialize_pem(),
                KeySource::Request(_) => String::new(),
            },
        })
    }

    /// Binds a certificate of a configured agency CA (or of the platform's, made elsewhere) to the client.
    pub async fn register_certificate(
        &self,
        actor: &Actor,
        client_id: &str,
        certificate_pem: &str,
    ) -> Result<ApiClientCertificate, Status> {
        let der = CertificateDer::from_pem_slice(certificate_pem.trim().as_bytes()).map_err(|_| {
            invalid(vec![Violation::new(
                "certificate_pem",
                "invalid_certificate",
                "证书应为 PEM 格式（BEGIN CERTIFICATE）",
            )])
        })?;
        let presented = self.verify(&der).map_err(|error| {
            let (code, message) = match error {
                PresentedError::Unparsable => ("invalid_certificate", "证书无法解析"),
                PresentedError::Expired => ("certificate_expired", "证书已过期或尚未生效"),
                PresentedError::Untrusted => {
                    ("certificate_untrusted", "证书不是本平台CA或已配置的部门CA签发的，或不能用于客户端认证")
                }
            };
            invalid(vec![Violation::new("certificate_pem", code, message)])
        })?;
        let mut transaction = self.pool().begin().await.map_err(kit::db::status)?;
        let exists: bool = sqlx::query_scalar("select exists (select 1 from api_clients where client_id = $1)")
            .bind(client_id)
            .fetch_one(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        if !exists {
            return Err(client_not_found(client_id));
        }
        let origin = if presented.issued_by_platform { "platform" } else { "agency_ca" };
        let pem = ca::pem_block("CERTIFICATE", &der);
        self.insert_certificate(
            &mut transaction,
            client_id,
            &der,
            &presented.serial,
            origin,
            &presented.subject,
            (presented.not_before, presented.not_after),
            &pem,
            actor,
        )
        .await?;
        let object = format!("api_client:{client_id}");
        let detail = serde_json::json!({ "serial": presented.serial, "origin": origin, "subject": presented.subject });
        Self::audit(&mut transaction, actor, "api_client.certificate_register", &object, detail).await?;
        let certificate = self.certificate_in(&mut transaction, &presented.fingerprint).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(certificate)
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_certificate(
        &self,
        transaction: &mut PgConnection,
        client_id: &str,
        der: &[u8],
        serial: &str,
        origin: &str,
        subject: &str,
        (not_before, not_after): (OffsetDateTime, OffsetDateTime),
        pem: &str,
        actor: &Actor,
    ) -> Result<(), Status> {
        let inserted = sqlx::query(
            "insert into api_client_certificates (fingerprint, client_id, serial, origin, subject, not_before, \
             not_after, pem, added_by) values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict do nothing",
        )
        .bind(ca::fingerprint(der))
        .bind(client_id)
        .bind(serial)
        .bind(origin)
        .bind(subject)
        .bind(not_before)
        .bind(not_after)
        .bind(pem)
        .bind(&actor.name)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?
        .rows_affected();
        // A platform serial already an account's would make the CRL ambiguous; so would one certificate for two
        // clients.
        let account_serial: bool = sqlx::query_scalar("select exists (select 1 from certificates where serial = $1)")
            .bind(serial)
            .fetch_one(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        if inserted == 0 || (origin == "platform" && account_serial) {
            return Err(invalid(vec![Violation::new(
                "certificate_pem",
                "certificate_registered",
                "此证书已登记（给某个接口客户端或某个账号），不能重复登记",
            )]));
        }
        Ok(())
    }

    async fn certificate_in(
        &self,
        connection: &mut PgConnection,
        fingerprint: &[u8],
    ) -> Result<ApiClientCertificate, Status> {
        let row: CertificateRow = sqlx::query_as(concat!(select_certificate!(), "where fingerprint = $1"))
            .bind(fingerprint)
            .fetch_one(&mut *connection)
            .await
            .map_err(kit::db::status)?;
        Ok(row.into_certificate())
    }

    /// Revokes a client's certificate by serial; the platform's go on the CRL in the same transaction.
    pub async fn revoke_certificate(
        &self,
        actor: &Actor,
        serial: &str,
        reason: &str,
    ) -> Result<ApiClientCertificate, Status> {
        let reason = if reason.trim().is_empty() { "unspecified" } else { reason.trim() };
        if !ca::REVOCATION_REASONS.contains(&reason) {
            return Err(invalid(vec![Violation::new(
                "reason",
                "unknown_reason",
                "吊销原因应为：unspecified、key_compromise、affiliation_changed、superseded、cessation_of_operation",
            )]));
        }
        let serial = ca::normalize_serial(serial);
        let mut transaction = self.pool().begin().await.map_err(kit::db::status)?;
        let rows: Vec<(Vec<u8>, String, String, String)> = sqlx::query_as(
            "select fingerprint, client_id, state, origin from api_client_certificates where serial = $1 for update",
        )
        .bind(&serial)
        .fetch_all(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let (fingerprint, client_id, state, origin) = match rows.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(refuse(
                    Code::NotFound,
                    "certificate_not_found",
                    format!("没有序列号为 {serial} 的客户端证书"),
                ));
            }
            _ => {
                return Err(refuse(
                    Code::FailedPrecondition,
                    "serial_ambiguous",
                    "不同CA签发的多张证书使用此序列号，请在管理页面按证书吊销",
                ));
            }
        };
        if state != "active" {
            return Err(refuse(Code::FailedPrecondition, "certificate_not_active", "此证书已吊销"));
        }
        sqlx::query(
            "update api_client_certificates set state = 'revoked', revoked_at = now(), revocation_reason = $2 \
             where fingerprint = $1",
        )
        .bind(&fingerprint)
        .bind(reason)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        if origin == "platform" && self.certificates.ca.is_some() {
            self.certificates.sign_crl(&mut transaction).await?;
        }
        let object = format!("api_client:{client_id}");
        let detail = serde_json::json!({ "serial": serial, "reason": reason });
        Self::audit(&mut transaction, actor, "api_client.certificate_revoke", &object, detail).await?;
        let certificate = self.certificate_in(&mut transaction, &fingerprint).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(certificate)
    }

    fn verify(&self, der: &[u8]) -> Result<ca::Presented, PresentedError> {
        let platform = self.certificates.ca.as_deref().map(ca::CertificateAuthority::certificate_der);
        ca::verify_presented(der, platform, &self.agency_roots, OffsetDateTime::now_utc())
    }

    /// Who a certificate presented on the agency port belongs to, or why it is refused.
    pub async fn authenticate(&self, der: &[u8]) -> Result<AuthenticatedApiClient, Status> {
        if der.is_empty() {
            return Err(unauthenticated(
                "certificate_missing",
                "未出示客户端证书：请以本平台为贵单位签发的证书进行双向 TLS 连接",
            ));
        }
        let presented = self.verify(der).map_err(|error| match error {
            PresentedError::Unparsable => unauthenticated("certificate_invalid", "客户端证书无法解析"),
            PresentedError::Expired => {
                unauthenticated("certificate_expired", "客户端证书已过期或尚未生效，请联系省级管理员更换")
            }
            PresentedError::Untrusted => unauthenticated(
                "certificate_untrusted",
                "客户端证书不是本平台CA或已配置的部门CA签发的，或不能用于客户端认证",
            ),
        })?;
        let row: Option<(String, String, Vec<String>, String, i32, String)> = sqlx::query_as(
            "select c.client_id, c.display_name, c.scopes, c.state, c.calls_per_minute, k.state \
             from api_client_certificates k join api_clients c using (client_id) where k.fingerprint = $1",
        )
        .bind(&presented.fingerprint)
        .fetch_optional(self.pool())
        .await
        .map_err(kit::db::status)?;
        let Some((client_id, display_name, scopes, client_state, calls_per_minute, certificate_state)) = row else {
            return Err(unauthenticated("client_unknown", "此证书未登记为任何接口客户端，请联系省级管理员"));
        };
        if certificate_state != "active" {
            return Err(unauthenticated("certificate_revoked", "客户端证书已吊销，请联系省级管理员重新签发"));
        }
        if client_state != "active" {
            return Err(refuse(Code::PermissionDenied, "client_disabled", "此接口客户端已被停用，请联系省级管理员"));
        }
        Ok(AuthenticatedApiClient {
            client_id,
            display_name,
            scopes,
            calls_per_minute: u32::try_from(calls_per_minute).unwrap_or_default(),
            serial: presented.serial,
            not_after: Some(timestamp(presented.not_after)),
        })
    }

    /// Appends one agency API call to the audit log.
    pub async fn record_call(
        &self,
        actor: &Actor,
        method: &str,
        outcome: Outcome,
        code: &str,
        reason: &str,
        detail_json: &str,
    ) -> Result<(), Status> {
        let mut detail = serde_json::from_str::<serde_json::Value>(detail_json)
            .ok()
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        detail["code"] = code.into();
        if !reason.is_empty() {
            detail["reason"] = reason.into();
        }
        let action = format!("agency_api.{}", method.rsplit('/').next().unwrap_or(method));
        let record = audit::Record { actor, action: &action, object: method, outcome, detail };
        let mut connection = self.pool().acquire().await.map_err(kit::db::status)?;
        audit::append(&mut connection, &record).await.map(|_| ()).map_err(kit::db::status)
    }
}
