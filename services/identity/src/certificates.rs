//! The CA operator's work: making (制作) the certificate of a key application, renewing and revoking certificates,
//! creating staff accounts with their certificates, and the trust bundle (CA roots, CRL, revoked serials) that the
//! gateway verifies client certificates with. Each change writes its event and audit record in its transaction;
//! a revocation re-signs the CRL in the same transaction, so the published CRL never lags the database.

use std::sync::Arc;

use kit::audit::Actor;
use kit::status::{Violation, invalid, refuse};
use prost::Message as _;
use proto::events::{AccountCreated, CertificateIssued, CertificateRenewed, CertificateRevoked};
use proto::identity::{CertificateInfo, IssuedCertificate, TrustBundle};
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Code, Status};

use crate::ca::{self, CertificateAuthority, Made, Revoked, Subject};
use crate::keys::{Keys, timestamp};

/// The organisation named in staff certificates.
pub const PLATFORM_ORGANIZATION: &str = "机关事业单位养老保险参保登记平台";

/// What the certificate operations need.
#[derive(Debug, Clone)]
pub struct Certificates {
    pub keys: Keys,
    pub ca: Option<Arc<CertificateAuthority>>,
}

/// The key pair a certificate is made for: the public key of a CSR, or one the platform generates.
pub enum KeySource {
    Request(rcgen::CertificateSigningRequestParams),
    Generated(rcgen::KeyPair),
}

impl KeySource {
    /// Parses the CSR when one is given; a bad one is the caller's error, named at `csr_pem`.
    pub fn from_request(csr_pem: &str) -> Result<Self, Status> {
        if csr_pem.trim().is_empty() {
            return ca::generate_key_pair().map(Self::Generated).map_err(internal);
        }
        rcgen::CertificateSigningRequestParams::from_pem(csr_pem.trim()).map(Self::Request).map_err(|error| {
            invalid(vec![Violation::new("csr_pem", "invalid_csr", format!("证书请求（CSR）无效或签名不正确：{error}"))])
        })
    }

    pub fn sign(&self, ca: &CertificateAuthority, subject: &Subject) -> Result<Made, Status> {
        match self {
            Self::Request(request) => ca.issue(subject, &request.public_key),
            Self::Generated(key) => ca.issue(subject, key),
        }
        .map_err(internal)
    }

    /// The answer for the CA operator: with the private key, once, when the platform generated it.
    fn hand_over(
        &self,
        ca: &CertificateAuthority,
        made: &Made,
        info: CertificateInfo,
    ) -> Result<IssuedCertificate, Status> {
        let mut issued = IssuedCertificate {
            certificate: Some(info),
            ca_certificate_pem: ca.certificate_pem().to_owned(),
            ..IssuedCertificate::default()
        };
        if let Self::Generated(key) = self {
            let password = ca::one_time_password();
            let alias = made.subject.clone();
            issued.pkcs12 = ca::pkcs12(&key.serialize_der(), &made.der, ca.certificate_der(), &alias, &password)
                .map_err(internal)?;
            issued.private_key_pem = key.serialize_pem();
            issued.pkcs12_password = password;
        }
        Ok(issued)
    }
}

pub fn internal(error: impl std::fmt::Display) -> Status {
    tracing::error!(%error, "certificate operation failed");
    Status::internal("internal error")
}

fn ca_missing() -> Status {
    refuse(Code::FailedPrecondition, "ca_not_configured", "本平台的CA尚未配置（identity.ca），暂不能制作证书")
}

/// The Chinese name of a certificate state.
pub fn certificate_state_label(state: &str) -> &'static str {
    match state {
        "active" => "有效",
        "revoked" => "已吊销",
        "superseded" => "已更新",
        _ => "未知",
    }
}

#[derive(sqlx::FromRow)]
pub struct CertificateRow {
    pub serial: String,
    pub fingerprint: Vec<u8>,
    pub account_id: uuid::Uuid,
    pub username: String,
    pub application_id: Option<String>,
    pub origin: String,
    pub subject: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub pem: String,
    pub state: String,
    pub revoked_at: Option<OffsetDateTime>,
    pub revocation_reason: Option<String>,
}

/// Certificates with their account's username; a macro so `concat!` can add clauses at compile time.
macro_rules! select_certificate {
    () => {
        "select c.serial, c.fingerprint, c.account_id, a.username, c.application_id, c.origin, c.subject, \
         c.not_before, c.not_after, c.pem, c.state, c.revoked_at, c.revocation_reason \
         from certificates c join accounts a using (account_id) "
    };
}
pub(crate) use select_certificate;

impl CertificateRow {
    pub fn into_info(self) -> CertificateInfo {
        CertificateInfo {
            state_label: certificate_state_label(&self.state).to_owned(),
            serial: self.serial,
            username: self.username,
            subject: self.subject,
            not_before: Some(timestamp(self.not_before)),
            not_after: Some(timestamp(self.not_after)),
            state: self.state,
            application_id: self.application_id.unwrap_or_default(),
            origin: self.origin,
            revoked_at: self.revoked_at.map(timestamp),
            revocation_reason: self.revocation_reason.unwrap_or_default(),
            fingerprint: ca::hex_upper(&self.fingerprint),
            certificate_pem: self.pem,
        }
    }
}

/// Stores a certificate just made for `account_id`.
pub async fn insert_certificate(
    connection: &mut PgConnection,
    made: &Made,
    account_id: uuid::Uuid,
    application_id: Option<&str>,
    origin: &str,
    actor: &Actor,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into certificates (serial, fingerprint, account_id, application_id, origin, subject, not_before, \
         not_after, pem, issued_by) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&made.serial)
    .bind(ca::fingerprint(&made.der))
    .bind(account_id)
    .bind(application_id)
    .bind(origin)
    .bind(&made.subject)
    .bind(made.not_before)
    .bind(made.not_after)
    .bind(&made.pem)
    .bind(&actor.name)
    .execute(connection)
    .await
    .map(|_| ())
}

impl Certificates {
    pub fn ca(&self) -> Result<&CertificateAuthority, Status> {
        self.ca.as_deref().ok_or_else(ca_missing)
    }

    pub async fn get(&self, connection: &mut PgConnection, serial: &str) -> Result<CertificateInfo, Status> {
        let row: Option<CertificateRow> = sqlx::query_as(concat!(select_certificate!(), "where c.serial = $1"))
            .bind(serial)
            .fetch_optional(connection)
            .await
            .map_err(kit::db::status)?;
        row.map(CertificateRow::into_info).ok_or_else(|| certificate_not_found(serial))
    }

    /// 制作: the certificate of a new application. Its unit operator account exists from now on, with the password
    /// given at application; the application is made (已制作).
    pub async fn issue_for_application(
        &self,
        actor: &Actor,
        application_id: &str,
        csr_pem: &str,
    ) -> Result<IssuedCertificate, Status> {
        let ca = self.ca()?;
        let key = KeySource::from_request(csr_pem)?;
        let object = format!("key_application:{}", application_id.trim());
        let mut transaction = self.keys.pool.begin().await.map_err(kit::db::status)?;
        let row: Option<(String, String, String, String, String, String)> = sqlx::query_as(
            "select a.username, a.state, a.institution_code, r.unit_name, a.applicant_name, a.password_hash \
             from key_applications a join registry_entries r using (institution_code) \
             where a.application_id = $1 for update of a",
        )
        .bind(application_id.trim())
        .fetch_optional(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let Some((username, state, institution_code, unit_name, applicant_name, password_hash)) = row else {
            let status = refuse(
                Code::NotFound,
                "application_not_found",
                format!("没有找到申请编号为 {} 的密钥申请", application_id.trim()),
            );
            drop(transaction);
            self.keys.audit_refusal_of(actor, "certificate.issue", &object, &status).await;
            return Err(status);
        };
        if state != "applied" {
            let status = refuse(
                Code::FailedPrecondition,
                "application_not_applied",
                format!("只有新申请可以制作密钥，此申请的状态为“{}”", crate::keys::state_label(&state)),
            );
            drop(transaction);
            self.keys.audit_refusal_of(actor, "certificate.issue", &object, &status).await;
            return Err(status);
        }
        let account_id = uuid::Uuid::now_v7();
        sqlx::query(
            "insert into accounts (account_id, username, display_name, role, institution_code, password_hash, \
             created_by) values ($1, $2, $3, 'unit_operator', $4, $5, $6)",
        )
        .bind(account_id)
        .bind(&username)
        .bind(format!("{unit_name}（{applicant_name}）"))
        .bind(&institution_code)
        .bind(&password_hash)
        .bind(&actor.name)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let subject = Subject {
            common_name: username.clone(),
            organization: unit_name,
            organizational_unit: institution_code.clone(),
        };
        let made = key.sign(ca, &subject)?;
        insert_certificate(&mut transaction, &made, account_id, Some(application_id.trim()), "issued", actor)
            .await
            .map_err(kit::db::status)?;
        sqlx::query(
            "update key_applications set state = 'made', made_at = now(), updated_at = now() where application_id = $1",
        )
        .bind(application_id.trim())
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let event = |meta| {
            CertificateIssued {
                meta,
                serial: made.serial.clone(),
                username: username.clone(),
                application_id: application_id.trim().to_owned(),
                institution_code: institution_code.clone(),
                not_after: Some(timestamp(made.not_after)),
            }
            .encode_to_vec()
        };
        self.keys.finish(&mut transaction, actor, "certificate.issue", &object, "certificate_issued", event).await?;
        let info = self.get(&mut transaction, &made.serial).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        key.hand_over(ca, &made, info)
    }

    /// Renews an active certificate: a new one for the same account and names; the old one is superseded (and so
    /// on the CRL), so an account holds one usable certificate at a time.
    pub async fn renew(&self, actor: &Actor, serial: &str, csr_pem: &str) -> Result<IssuedCertificate, Status> {
        let ca = self.ca()?;
        let key = KeySource::from_request(csr_pem)?;
        let serial = ca::normalize_serial(serial);
        let object = format!("certificate:{serial}");
        let mut transaction = self.keys.pool.begin().await.map_err(kit::db::status)?;
        let old = self.lock_active(&mut transaction, actor, "certificate.renew", &serial).await?;
        let subject = subject_of_account(&mut transaction, old.account_id).await?;
        let made = key.sign(ca, &subject)?;
        retire(&mut transaction, &serial, "superseded", "superseded").await?;
        insert_certificate(&mut transaction, &made, old.account_id, old.application_id.as_deref(), "issued", actor)
            .await
            .map_err(kit::db::status)?;
        self.sign_crl(&mut transaction).await?;
        let event = |meta| {
            CertificateRenewed {
                meta,
                serial: made.serial.clone(),
                previous_serial: serial.clone(),
                username: old.username.clone(),
                not_after: Some(timestamp(made.not_after)),
            }
            .encode_to_vec()
        };
        self.keys.finish(&mut transaction, actor, "certificate.renew", &object, "certificate_renewed", event).await?;
        let info = self.get(&mut transaction, &made.serial).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        key.hand_over(ca, &made, info)
    }

    /// Revokes an active certificate. A unit's key becomes revoked (已吊销) with it; the CRL is re-signed in the
    /// same transaction.
    pub async fn revoke(&self, actor: &Actor, serial: &str, reason: &str) -> Result<CertificateInfo, Status> {
        let reason = if reason.trim().is_empty() { "unspecified" } else { reason.trim() };
        if !ca::REVOCATION_REASONS.contains(&reason) {
            return Err(invalid(vec![Violation::new(
                "reason",
                "unknown_reason",
                "吊销原因应为：unspecified、key_compromise、affiliation_changed、superseded、cessation_of_operation",
            )]));
        }
        let serial = ca::normalize_serial(serial);
        let object = format!("certificate:{serial}");
        let mut transaction = self.keys.pool.begin().await.map_err(kit::db::status)?;
        let old = self.lock_active(&mut transaction, actor, "certificate.revoke", &serial).await?;
        let retired_state = if reason == "superseded" { "superseded" } else { "revoked" };
        retire(&mut transaction, &serial, retired_state, reason).await?;
        if let Some(application_id) = &old.application_id {
            sqlx::query(
                "update key_applications set state = 'revoked', updated_at = now() \
                 where application_id = $1 and state = 'made'",
            )
            .bind(application_id)
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        }
        if old.origin == "legacy" {
            sqlx::query("update legacy_keys set state = 'revoked' where serial = $1")
                .bind(&serial)
                .execute(&mut *transaction)
                .await
                .map_err(kit::db::status)?;
        }
        if self.ca.is_some() {
            self.sign_crl(&mut transaction).await?;
        }
        let event = |meta| {
            CertificateRevoked {
                meta,
                serial: serial.clone(),
                username: old.username.clone(),
                reason: reason.to_owned(),
            }
            .encode_to_vec()
        };
        self.keys.finish(&mut transaction, actor, "certificate.revoke", &object, "certificate_revoked", event).await?;
        let info = self.get(&mut transaction, &serial).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(info)
    }

    async fn lock_active(
        &self,
        transaction: &mut PgConnection,
        actor: &Actor,
        action: &str,
        serial: &str,
    ) -> Result<CertificateRow, Status> {
        let row: Option<CertificateRow> =
            sqlx::query_as(concat!(select_certificate!(), "where c.serial = $1 for update of c"))
                .bind(serial)
                .fetch_optional(&mut *transaction)
                .await
                .map_err(kit::db::status)?;
        let object = format!("certificate:{serial}");
        let status = match row {
            Some(row) if row.state == "active" => return Ok(row),
            Some(row) => refuse(
                Code::FailedPrecondition,
                "certificate_not_active",
                format!("此证书的状态为“{}”，不能再办理", certificate_state_label(&row.state)),
            ),
            None => certificate_not_found(serial),
        };
        self.keys.audit_refusal_of(actor, action, &object, &status).await;
        Err(status)
    }

    /// Signs a new CRL of every revoked certificate not yet expired, numbered one above the last. The table lock
    /// orders concurrent revocations, so CRL numbers never repeat and the newest CRL lists every revocation.
    pub async fn sign_crl(&self, transaction: &mut PgConnection) -> Result<(), Status> {
        let ca = self.ca()?;
        sqlx::query("lock table crls in exclusive mode").execute(&mut *transaction).await.map_err(kit::db::status)?;
        let number: i64 = sqlx::query_scalar("select coalesce(max(number), 0) + 1 from crls")
            .fetch_one(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        let revoked: Vec<(String, OffsetDateTime, Option<String>)> = sqlx::query_as(
            "select serial, revoked_at, revocation_reason from certificates \
             where state <> 'active' and origin = 'issued' and not_after > now() \
             union all select serial, revoked_at, revocation_reason from api_client_certificates \
             where state = 'revoked' and origin = 'platform' and not_after > now() order by revoked_at",
        )
        .fetch_all(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let revoked: Vec<Revoked> = revoked
            .into_iter()
            .map(|(serial, revoked_at, reason)| Revoked { serial, revoked_at, reason: reason.unwrap_or_default() })
            .collect();
        let (der, this_update, next_update) =
            ca.sign_crl(u64::try_from(number).unwrap_or(1), &revoked).map_err(internal)?;
        sqlx::query("insert into crls (number, der, this_update, next_update) values ($1, $2, $3, $4)")
            .bind(number)
            .bind(der)
            .bind(this_update)
            .bind(next_update)
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        Ok(())
    }

    /// The CA certificate, the legacy roots, the current CRL (re-signed when half its validity has passed) and every
    /// revoked serial.
    pub async fn trust_bundle(&self) -> Result<TrustBundle, Status> {
        let pool = &self.keys.pool;
        let mut crl_der = Vec::new();
        if let Some(ca) = self.ca.as_deref() {
            let latest: Option<(Vec<u8>, OffsetDateTime)> =
                sqlx::query_as("select der, this_update from crls order by number desc limit 1")
                    .fetch_optional(pool)
                    .await
                    .map_err(kit::db::status)?;
            let stale = latest
                .as_ref()
                .is_none_or(|(_, this_update)| OffsetDateTime::now_utc() - *this_update > ca.crl_validity() / 2);
            if stale {
                let mut transaction = pool.begin().await.map_err(kit::db::status)?;
                self.sign_crl(&mut transaction).await?;
                transaction.commit().await.map_err(kit::db::status)?;
            }
            crl_der = sqlx::query_scalar("select der from crls order by number desc limit 1")
                .fetch_one(pool)
                .await
                .map_err(kit::db::status)?;
        }
        let legacy_root_pems: Vec<String> = sqlx::query_scalar("select pem from legacy_roots order by loaded_at")
            .fetch_all(pool)
            .await
            .map_err(kit::db::status)?;
        let revoked_serials: Vec<String> = sqlx::query_scalar(
            "select serial from certificates where state <> 'active' and not_after > now() \
             union select serial from legacy_keys where state = 'revoked' \
             union select serial from api_client_certificates \
             where state = 'revoked' and origin = 'platform' and not_after > now()",
        )
        .fetch_all(pool)
        .await
        .map_err(kit::db::status)?;
        let revoked_client_fingerprints: Vec<Vec<u8>> = sqlx::query_scalar(
            "select fingerprint from api_client_certificates where state = 'revoked' and not_after > now()",
        )
        .fetch_all(pool)
        .await
        .map_err(kit::db::status)?;
        Ok(TrustBundle {
            revoked_client_fingerprints,
            ca_certificate_pem: self.ca.as_deref().map(|ca| ca.certificate_pem().to_owned()).unwrap_or_default(),
            legacy_root_pems,
            crl_der,
            revoked_serials,
            ca_configured: self.ca.is_some(),
        })
    }

    pub async fn list(&self, username: &str, limit: u32) -> Result<Vec<CertificateInfo>, Status> {
        let rows: Vec<CertificateRow> = sqlx::query_as(concat!(
            select_certificate!(),
            "where ($1 = '' or a.username = $1) order by c.issued_at desc limit $2"
        ))
        .bind(username.trim())
        .bind(i64::from(limit_or_default(limit)))
        .fetch_all(&self.keys.pool)
        .await
        .map_err(kit::db::status)?;
        Ok(rows.into_iter().map(CertificateRow::into_info).collect())
    }

    /// A staff account and its software certificate, in one transaction: an account without a certificate could
    /// never log in.
    pub async fn create_staff_account(
        &self,
        actor: &Actor,
        account: crate::accounts::NewStaffAccount,
    ) -> Result<(uuid::Uuid, IssuedCertificate), Status> {
        let ca = self.ca()?;
        let key = KeySource::Generated(ca::generate_key_pair().map_err(internal)?);
        let password_hash = self.keys.hash_password(account.password).await?;
        let object = format!("account:{}", account.username);
        let mut transaction = self.keys.pool.begin().await.map_err(kit::db::status)?;
        let taken: bool = sqlx::query_scalar(
            "select exists (select 1 from accounts where username = $1) \
             or exists (select 1 from key_applications where username = $1) \
             or exists (select 1 from legacy_keys where username = $1)",
        )
        .bind(&account.username)
        .fetch_one(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        if taken {
            let status = invalid(vec![Violation::new("username", "username_taken", "该用户名已被使用")]);
            drop(transaction);
            self.keys.audit_refusal_of(actor, "account.create", &object, &status).await;
            return Err(status);
        }
        let account_id = uuid::Uuid::now_v7();
        sqlx::query(
            "insert into accounts (account_id, username, display_name, role, agency_code, password_hash, created_by) \
             values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(account_id)
        .bind(&account.username)
        .bind(&account.display_name)
        .bind(&account.role)
        .bind(account.agency_code.as_deref())
        .bind(&password_hash)
        .bind(&actor.name)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let subject = Subject {
            common_name: account.username.clone(),
            organization: PLATFORM_ORGANIZATION.to_owned(),
            organizational_unit: account.role.clone(),
        };
        let made = key.sign(ca, &subject)?;
        insert_certificate(&mut transaction, &made, account_id, None, "issued", actor)
            .await
            .map_err(kit::db::status)?;
        let created = |meta| {
            AccountCreated { meta, username: account.username.clone(), role: account.role.clone() }.encode_to_vec()
        };
        self.keys.finish(&mut transaction, actor, "account.create", &object, "account_created", created).await?;
        let issued = |meta| {
            CertificateIssued {
                meta,
                serial: made.serial.clone(),
                username: account.username.clone(),
                not_after: Some(timestamp(made.not_after)),
                ..CertificateIssued::default()
            }
            .encode_to_vec()
        };
        let certificate_object = format!("certificate:{}", made.serial);
        self.keys
            .finish(&mut transaction, actor, "certificate.issue", &certificate_object, "certificate_issued", issued)
            .await?;
        let info = self.get(&mut transaction, &made.serial).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok((account_id, key.hand_over(ca, &made, info)?))
    }
}

/// Marks a certificate no longer usable (`state` revoked or superseded), with when and why.
async fn retire(transaction: &mut PgConnection, serial: &str, state: &str, reason: &str) -> Result<(), Status> {
    sqlx::query("update certificates set state = $2, revoked_at = now(), revocation_reason = $3 where serial = $1")
        .bind(serial)
        .bind(state)
        .bind(reason)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
    Ok(())
}

/// The names a renewed certificate carries: the account's unit, or the platform and the role.
async fn subject_of_account(transaction: &mut PgConnection, account_id: uuid::Uuid) -> Result<Subject, Status> {
    let (username, role, institution_code, unit_name): (String, String, Option<String>, Option<String>) =
        sqlx::query_as(
            "select a.username, a.role, a.institution_code, r.unit_name from accounts a \
             left join registry_entries r using (institution_code) where a.account_id = $1",
        )
        .bind(account_id)
        .fetch_one(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
    Ok(match (institution_code, unit_name) {
        (Some(code), Some(unit_name)) => {
            Subject { common_name: username, organization: unit_name, organizational_unit: code }
        }
        _ => {
            Subject { common_name: username, organization: PLATFORM_ORGANIZATION.to_owned(), organizational_unit: role }
        }
    })
}

fn certificate_not_found(serial: &str) -> Status {
    refuse(Code::NotFound, "certificate_not_found", format!("没有找到序列号为 {serial} 的证书"))
}

pub fn limit_or_default(limit: u32) -> u32 {
    if limit == 0 { 100 } else { limit.min(500) }
}
