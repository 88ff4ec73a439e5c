//! Accounts and logging in: the certificate first (it must chain to the platform's CA or a legacy root, be in its
//! validity period, and belong to an active key), then the username and password. A legacy key the platform does
//! not know yet is activated (密钥激活) once, against the registry. A unit operator's first login asks the units
//! service, through an event, to create the unit's draft record.
//!
//! Lockout after repeated failures is the gateway's (it keeps the counters in Redis); every attempt, good or bad,
//! is audited here.

use kit::audit::{self, Actor, Outcome};
use kit::status::{Violation, invalid, refuse};
use prost::Message as _;
use proto::events::{KeyActivated, UnitFirstLogin};
use proto::identity::{Account, ActivateKeyRequest, CertificateInfo, ImportReport, LoginReply, RowError};
use rustls_pki_types::pem::PemObject as _;
use secrecy::SecretString;
use sqlx::PgConnection;
use time::{Duration, OffsetDateTime};
use tonic::{Code, Status};

use crate::ca::{self, PresentedError};
use crate::certificates::{CertificateRow, Certificates, insert_certificate, internal, select_certificate};
use crate::keys::{Keys, timestamp};
use spreadsheet::Table;

/// The roles of staff accounts, which an admin creates (unit operators come from key applications).
pub const STAFF_ROLES: [&str; 5] =
    ["agency_reviewer", "ca_operator", "province_admin", "security_admin", "audit_admin"];

/// How long an activation ticket is good for.
const ACTIVATION_TICKET_LIFETIME: Duration = Duration::minutes(15);

/// The columns of the legacy key list.
pub const LEGACY_KEY_COLUMNS: [&str; 3] = ["证书序列号", "登录用户名", "密码哈希"];

/// The Chinese name of a role.
pub fn role_label(role: &str) -> &'static str {
    match role {
        "unit_operator" => "单位经办员",
        "agency_reviewer" => "经办机构审核员",
        "ca_operator" => "CA操作员",
        "province_admin" => "省级管理员",
        "security_admin" => "安全管理员",
        "audit_admin" => "审计管理员",
        _ => "未知角色",
    }
}

/// A checked request for a staff account.
pub struct NewStaffAccount {
    pub username: String,
    pub display_name: String,
    pub role: String,
    pub agency_code: Option<String>,
    pub password: SecretString,
}

/// Whether a username is acceptable for a staff account.
pub fn check_username(field: &str, username: &str, violations: &mut Vec<Violation>) {
    let length_ok = (3..=32).contains(&username.chars().count());
    let chars_ok = username.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if !length_ok || !chars_ok {
        violations.push(Violation::new(
            field,
            "invalid_username",
            "用户名应为3至32位小写字母、数字、点、下划线或连字符",
        ));
    }
}

/// What the login and activation operations need.
#[derive(Debug, Clone)]
pub struct Accounts {
    pub certificates: Certificates,
}

#[derive(sqlx::FromRow)]
struct AccountRow {
    account_id: uuid::Uuid,
    username: String,
    display_name: String,
    role: String,
    institution_code: Option<String>,
    unit_name: Option<String>,
    agency_code: Option<String>,
    agency_name: Option<String>,
    password_hash: String,
    created_at: OffsetDateTime,
    last_login_at: Option<OffsetDateTime>,
}

/// Accounts with their unit's and agency's names; a macro so `concat!` can add clauses at compile time.
macro_rules! select_account {
    () => {
        "select a.account_id, a.username, a.display_name, a.role, a.institution_code, r.unit_name, a.agency_code, \
         g.name as agency_name, a.password_hash, a.created_at, a.last_login_at \
         from accounts a left join registry_entries r using (institution_code) \
         left join agencies g on g.code = a.agency_code "
    };
}

impl AccountRow {
    fn into_account(self) -> Account {
        Account {
            account_id: self.account_id.to_string(),
            role_label: role_label(&self.role).to_owned(),
            username: self.username,
            display_name: self.display_name,
            role: self.role,
            institution_code: self.institution_code.unwrap_or_default(),
            unit_name: self.unit_name.unwrap_or_default(),
            agency_code: self.agency_code.unwrap_or_default(),
            agency_name: self.agency_name.unwrap_or_default(),
            created_at: Some(timestamp(self.created_at)),
            last_login_at: self.last_login_at.map(timestamp),
        }
    }
}

fn unauthenticated(code: &str, message: &str) -> Status {
    refuse(Code::Unauthenticated, code, message)
}

fn wrong_credentials() -> Status {
    unauthenticated("wrong_credentials", "用户名或密码错误")
}

fn certificate_unknown() -> Status {
    unauthenticated("certificate_unknown", "该证书未在本平台登记，请先申请密钥或联系CA")
}

fn presented_error(error: PresentedError) -> Status {
    match error {
        PresentedError::Expired => unauthenticated("certificate_expired", "证书已过期或尚未生效，请联系CA办理证书更新"),
        PresentedError::Unparsable | PresentedError::Untrusted => {
            unauthenticated("certificate_invalid", "证书不是本平台或原系统的认证机构签发的，不能登录")
        }
    }
}

impl Accounts {
    fn keys(&self) -> &Keys {
        &self.certificates.keys
    }

    async fn account(&self, connection: &mut PgConnection, account_id: uuid::Uuid) -> Result<AccountRow, Status> {
        sqlx::query_as(concat!(select_account!(), "where a.account_id = $1"))
            .bind(account_id)
            .fetch_one(connection)
            .await
            .map_err(kit::db::status)
    }

    pub async fn list(&self) -> Result<Vec<Account>, Status> {
        let rows: Vec<AccountRow> = sqlx::query_as(concat!(select_account!(), "order by a.role, a.username"))
            .fetch_all(&self.keys().pool)
            .await
            .map_err(kit::db::status)?;
        Ok(rows.into_iter().map(AccountRow::into_account).collect())
    }

    pub async fn get_by_id(&self, account_id: uuid::Uuid) -> Result<Account, Status> {
        let mut connection = self.keys().pool.acquire().await.map_err(kit::db::status)?;
        self.account(&mut connection, account_id).await.map(AccountRow::into_account)
    }

    /// Verifies a presented certificate against the platform's CA and the legacy roots.
    async fn verify_presented(&self, der: &[u8]) -> Result<ca::Presented, Status> {
        if der.is_empty() {
            return Err(unauthenticated("certificate_missing", "请插入密钥（客户端证书）后再登录"));
        }
        let legacy_roots: Vec<Vec<u8>> = sqlx::query_scalar("select pem from legacy_roots")
            .fetch_all(&self.keys().pool)
            .await
            .map_err(kit::db::status)?
            .iter()
            .filter_map(|pem: &String| rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok())
            .map(|der| der.to_vec())
            .collect();
        let platform = self.certificates.ca.as_deref().map(ca::CertificateAuthority::certificate_der);
        ca::verify_presented(der, platform, &legacy_roots, OffsetDateTime::now_utc()).map_err(presented_error)
    }

    /// Logs in: the certificate, then the username and password; the answer carries the account, or an activation
    /// ticket for a legacy key not yet activated. Every attempt is audited.
    pub async fn login(
        &self,
        actor: &Actor,
        certificate_der: &[u8],
        username: &str,
        password: SecretString,
    ) -> Result<LoginReply, Status> {
        let username = username.trim();
        let object = format!("account:{username}");
        let result = self.try_login(certificate_der, username, password).await;
        match &result {
            Ok(reply) if !reply.activation_ticket.is_empty() => {
                self.audit(actor, "login.activation_required", &object, Outcome::Success).await;
            }
            Ok(_) => {}
            Err(status) => self.keys().audit_refusal_of(actor, "login", &object, status).await,
        }
        let reply = result?;
        if reply.activation_ticket.is_empty() {
            let account_id = reply.account.as_ref().map(|account| account.account_id.clone()).unwrap_or_default();
            return self.record_login(actor, account_id.parse().map_err(internal)?, reply).await;
        }
        Ok(reply)
    }

    async fn try_login(&self, der: &[u8], username: &str, password: SecretString) -> Result<LoginReply, Status> {
        let presented = self.verify_presented(der).await?;
        let pool = &self.keys().pool;
        let known: Option<CertificateRow> = sqlx::query_as(concat!(select_certificate!(), "where c.fingerprint = $1"))
            .bind(&presented.fingerprint)
            .fetch_optional(pool)
            .await
            .map_err(kit::db::status)?;
        if let Some(certificate) = known {
            if certificate.state != "active" {
                return Err(unauthenticated("certificate_revoked", "该证书已吊销或已更新，不能再登录"));
            }
            let mut connection = pool.acquire().await.map_err(kit::db::status)?;
            let account = self.account(&mut connection, certificate.account_id).await?;
            drop(connection);
            // The password is checked even when the username is wrong, so both take the same time.
            let password_ok =
                self.keys().passwords.verify(account.password_hash.clone(), password).await.map_err(internal)?;
            if !password_ok || account.username != username {
                return Err(wrong_credentials());
            }
            return Ok(LoginReply {
                account: Some(account.into_account()),
                certificate: Some(certificate.into_info()),
                ..LoginReply::default()
            });
        }
        if presented.issued_by_platform {
            return Err(certificate_unknown());
        }
        let legacy: Option<(String, String, String, Option<String>)> = sqlx::query_as(
            "select username, password_hash, state, institution_code from legacy_keys where serial = $1",
        )
        .bind(&presented.serial)
        .fetch_optional(pool)
        .await
        .map_err(kit::db::status)?;
        let Some((legacy_username, password_hash, state, institution_code)) = legacy else {
            return Err(certificate_unknown());
        };
        match state.as_str() {
            "known" => {}
            "revoked" => return Err(unauthenticated("certificate_revoked", "该密钥已吊销，不能再登录")),
            _ => return Err(certificate_unknown()),
        }
        let password_ok = self.keys().passwords.verify(password_hash, password).await.map_err(internal)?;
        if !password_ok || legacy_username != username {
            return Err(wrong_credentials());
        }
        Ok(LoginReply {
            activation_ticket: self
                .activation_ticket(&presented, OffsetDateTime::now_utc() + ACTIVATION_TICKET_LIFETIME),
            activation_username: legacy_username,
            activation_institution_code: institution_code.unwrap_or_default(),
            ..LoginReply::default()
        })
    }

    /// `<expiry>.<hmac>`: proof, for this certificate only and for a short while, that its username and password
    /// were right. Stateless, so any identity replica can check it.
    fn activation_ticket(&self, presented: &ca::Presented, expires: OffsetDateTime) -> String {
        let expiry = expires.unix_timestamp().to_string();
        let tag = self
            .keys()
            .id_numbers
            .tag("activation", &[presented.serial.as_bytes(), &presented.fingerprint, expiry.as_bytes()]);
        format!("{expiry}.{}", ca::hex_upper(&tag))
    }

    fn ticket_valid(&self, presented: &ca::Presented, ticket: &str) -> bool {
        let Some((expiry, _)) = ticket.split_once('.') else { return false };
        let Ok(expires) = expiry.parse::<i64>() else { return false };
        let Ok(expires) = OffsetDateTime::from_unix_timestamp(expires) else { return false };
        if expires < OffsetDateTime::now_utc() {
            return false;
        }
        let expected = self.activation_ticket(presented, expires);
        expected.len() == ticket.len()
            && expected.bytes().zip(ticket.bytes()).fold(0u8, |difference, (a, b)| difference | (a ^ b)) == 0
    }

    /// 密钥激活: the details must name one registry entry (code, name and handling agency alike), and the unit the
    /// earlier system knew the key for, when it said. Then the key is active and the unit logged in.
    pub async fn activate(&self, actor: &Actor, request: ActivateKeyRequest) -> Result<LoginReply, Status> {
        let presented = self.verify_presented(&request.certificate_der).await?;
        let object = format!("legacy_key:{}", presented.serial);
        let result = self.try_activate(actor, &presented, &request).await;
        if let Err(status) = &result {
            self.keys().audit_refusal_of(actor, "key.activate", &object, status).await;
        }
        let account_id = result?;
        let account = self.get_by_id(account_id).await?;
        let certificate = self.certificate_by_fingerprint(&presented.fingerprint).await?;
        self.record_login(
            actor,
            account_id,
            LoginReply { account: Some(account), certificate: Some(certificate), ..LoginReply::default() },
        )
        .await
    }

    async fn try_activate(
        &self,
        actor: &Actor,
        presented: &ca::Presented,
        request: &ActivateKeyRequest,
    ) -> Result<uuid::Uuid, Status> {
        if presented.issued_by_platform || !self.ticket_valid(presented, &request.activation_ticket) {
            return Err(unauthenticated("activation_expired", "激活已超时或无效，请重新登录"));
        }
        let pool = &self.keys().pool;
        let mut transaction = pool.begin().await.map_err(kit::db::status)?;
        let legacy: Option<(String, String, String, Option<String>)> = sqlx::query_as(
            "select username, password_hash, state, institution_code from legacy_keys where serial = $1 for update",
        )
        .bind(&presented.serial)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let Some((username, password_hash, state, listed_code)) = legacy else { return Err(certificate_unknown()) };
        if state != "known" {
            return Err(refuse(Code::FailedPrecondition, "key_already_activated", "该密钥已激活，请直接登录"));
        }
        let mut violations = Vec::new();
        let category = validators::text::normalize_name(&request.category);
        if category != crate::keys::CATEGORY && category != "pension_key" {
            violations.push(Violation::new("category", "unknown_category", "申请类别应为“机关事业养老保险密钥注册”"));
        }
        if !request.agreement_accepted {
            violations.push(Violation::new("agreement_accepted", "agreement_required", "请阅读并同意用户协议"));
        }
        let institution_code = request.institution_code.trim();
        let entry: Option<(String, String, String)> = if institution_code.is_empty() {
            violations.push(Violation::new("institution_code", "required", "请填写机构编码"));
            None
        } else {
            sqlx::query_as(
                "select unit_name, normalized_name, agency_code from registry_entries where institution_code = $1",
            )
            .bind(institution_code)
            .fetch_optional(&mut *transaction)
            .await
            .map_err(kit::db::status)?
        };
        match (&entry, institution_code.is_empty()) {
            (None, false) => violations.push(Violation::new(
                "institution_code",
                "unknown_institution",
                "编制通中没有这个机构编码，请核对后重新输入",
            )),
            (Some((_, normalized, agency)), _) => {
                if validators::text::normalize_name(&request.unit_name) != *normalized {
                    violations.push(Violation::new(
                        "unit_name",
                        "unit_name_mismatch",
                        "单位名称与编制通中此机构编码登记的名称不一致",
                    ));
                }
                if request.agency_code.trim() != agency {
                    violations.push(Violation::new(
                        "agency_code",
                        "agency_mismatch",
                        "所属经办机构与编制通登记的不一致",
                    ));
                }
                if listed_code.as_deref().is_some_and(|listed| listed != institution_code) {
                    violations.push(Violation::new(
                        "institution_code",
                        "institution_mismatch",
                        "此密钥在原系统中登记的单位不是这个机构编码",
                    ));
                }
            }
            (None, true) => {}
        }
        crate::keys::reject_if_any(violations)?;
        let unit_name = entry.map(|(name, _, _)| name).unwrap_or_default();
        let account_id = uuid::Uuid::now_v7();
        sqlx::query(
            "insert into accounts (account_id, username, display_name, role, institution_code, password_hash, \
             created_by) values ($1, $2, $3, 'unit_operator', $4, $5, $6)",
        )
        .bind(account_id)
        .bind(&username)
        .bind(&unit_name)
        .bind(institution_code)
        .bind(&password_hash)
        .bind(&actor.name)
        .execute(&mut *transaction)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(database) if database.code().as_deref() == Some("23505") => {
                refuse(Code::AlreadyExists, "username_taken", "该密钥的用户名已被其他账户使用，请联系省级管理员")
            }
            _ => kit::db::status(error),
        })?;
        let pem = ca::pem_block("CERTIFICATE", &request.certificate_der);
        let made = ca::Made {
            serial: presented.serial.clone(),
            der: request.certificate_der.clone(),
            pem,
            not_before: presented.not_before,
            not_after: presented.not_after,
            subject: presented.subject.clone(),
        };
        insert_certificate(&mut transaction, &made, account_id, None, "legacy", actor)
            .await
            .map_err(kit::db::status)?;
        sqlx::query(
            "update legacy_keys set state = 'activated', account_id = $2, activated_at = now() where serial = $1",
        )
        .bind(&presented.serial)
        .bind(account_id)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let event = |meta| {
            KeyActivated {
                meta,
                serial: presented.serial.clone(),
                username: username.clone(),
                institution_code: institution_code.to_owned(),
            }
            .encode_to_vec()
        };
        let object = format!("legacy_key:{}", presented.serial);
        self.keys().finish(&mut transaction, actor, "key.activate", &object, "key_activated", event).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(account_id)
    }

    async fn certificate_by_fingerprint(&self, fingerprint: &[u8]) -> Result<CertificateInfo, Status> {
        let row: CertificateRow = sqlx::query_as(concat!(select_certificate!(), "where c.fingerprint = $1"))
            .bind(fingerprint)
            .fetch_one(&self.keys().pool)
            .await
            .map_err(kit::db::status)?;
        Ok(row.into_info())
    }

    /// Stamps the login, audits it, and on a unit operator's first login sends the unit's registry entry to the
    /// units service (through the outbox) so its draft record exists.
    async fn record_login(
        &self,
        actor: &Actor,
        account_id: uuid::Uuid,
        reply: LoginReply,
    ) -> Result<LoginReply, Status> {
        let mut transaction = self.keys().pool.begin().await.map_err(kit::db::status)?;
        let first: Option<(String, Option<String>)> = sqlx::query_as(
            "update accounts set last_login_at = now(), first_login_at = coalesce(first_login_at, now()) \
             where account_id = $1 returning username, \
             case when first_login_at = last_login_at and role = 'unit_operator' then institution_code end",
        )
        .bind(account_id)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let Some((username, first_unit)) = first else { return Err(internal("the account vanished")) };
        let actor = Actor { name: username.clone(), ..actor.clone() };
        let object = format!("account:{username}");
        if let Some(institution_code) = first_unit {
            let entry: (String, String, String, String, String, Option<String>) = sqlx::query_as(
                "select r.unit_name, r.credit_code, r.unit_type, r.region_code, r.agency_code, a.name \
                 from registry_entries r left join agencies a on a.code = r.agency_code where r.institution_code = $1",
            )
            .bind(&institution_code)
            .fetch_one(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
            let event = |meta| {
                UnitFirstLogin {
                    meta,
                    username: username.clone(),
                    institution_code: institution_code.clone(),
                    unit_name: entry.0.clone(),
                    credit_code: entry.1.clone(),
                    unit_type: entry.2.clone(),
                    region_code: entry.3.clone(),
                    agency_code: entry.4.clone(),
                    agency_name: entry.5.clone().unwrap_or_default(),
                }
                .encode_to_vec()
            };
            self.keys().finish(&mut transaction, &actor, "login.first", &object, "unit_first_login", event).await?;
        } else {
            let record = audit::Record {
                actor: &actor,
                action: "login",
                object: &object,
                outcome: Outcome::Success,
                detail: serde_json::json!({}),
            };
            audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
        }
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(reply)
    }

    async fn audit(&self, actor: &Actor, action: &str, object: &str, outcome: Outcome) {
        let record = audit::Record { actor, action, object, outcome, detail: serde_json::json!({}) };
        let result = match self.keys().pool.acquire().await {
            Ok(mut connection) => audit::append(&mut connection, &record).await.map(|_| ()),
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            tracing::warn!(%error, action, "cannot audit");
        }
    }

    /// Loads legacy roots and the legacy key list. Keys already activated keep their state; the others are
    /// replaced by the list's rows.
    pub async fn import_legacy(&self, roots_pem: &str, table: &Table, actor: &Actor) -> Result<ImportReport, Status> {
        let roots: Vec<rustls_pki_types::CertificateDer<'static>> =
            rustls_pki_types::CertificateDer::pem_slice_iter(roots_pem.as_bytes()).collect::<Result<_, _>>().map_err(
                |error| {
                    invalid(vec![Violation::new("roots_pem", "invalid_pem", format!("根证书不是有效的PEM：{error}"))])
                },
            )?;
        let mut parsed_roots = Vec::new();
        for root in &roots {
            let Ok((_, parsed)) = x509_parser::parse_x509_certificate(root) else {
                return Err(invalid(vec![Violation::new("roots_pem", "invalid_certificate", "根证书无法解析")]));
            };
            parsed_roots.push((
                ca::fingerprint(root),
                parsed.subject().to_string(),
                ca::pem_block("CERTIFICATE", root),
            ));
        }
        let pool = &self.keys().pool;
        let mut transaction = pool.begin().await.map_err(kit::db::status)?;
        for (fingerprint, subject, pem) in &parsed_roots {
            sqlx::query(
                "insert into legacy_roots (fingerprint, subject, pem, loaded_by) values ($1, $2, $3, $4) \
                 on conflict (fingerprint) do nothing",
            )
            .bind(fingerprint)
            .bind(subject)
            .bind(pem)
            .bind(&actor.name)
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        }
        let mut report = ImportReport::default();
        for row in &table.rows {
            let error = |column: &str, code: &str, message: &str| RowError {
                row: row.number,
                column: column.to_owned(),
                code: code.to_owned(),
                message: message.to_owned(),
            };
            let serial = ca::normalize_serial(row.get("证书序列号"));
            let username = row.get("登录用户名").trim().to_owned();
            let password_hash = row.get("密码哈希").trim().to_owned();
            let institution_code = Some(row.get("机构编码").trim().to_owned()).filter(|code| !code.is_empty());
            if serial.is_empty() {
                report.errors.push(error("证书序列号", "invalid_serial", "证书序列号应为十六进制数"));
                continue;
            }
            if username.is_empty() {
                report.errors.push(error("登录用户名", "required", "登录用户名不能为空"));
                continue;
            }
            if !crate::secrets::PasswordHasher::is_valid_hash(&password_hash) {
                report.errors.push(error("密码哈希", "invalid_password_hash", "密码哈希应为argon2的PHC格式"));
                continue;
            }
            let conflicts: (bool, bool) = sqlx::query_as(
                "select exists (select 1 from registry_entries where institution_code = $2) or $2 is null, \
                 exists (select 1 from accounts where username = $1) \
                 or exists (select 1 from key_applications where username = $1) \
                 or exists (select 1 from legacy_keys where username = $1 and serial <> $3)",
            )
            .bind(&username)
            .bind(institution_code.as_deref())
            .bind(&serial)
            .fetch_one(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
            if !conflicts.0 {
                report.errors.push(error("机构编码", "unknown_institution", "编制通中没有这个机构编码"));
                continue;
            }
            if conflicts.1 {
                report.errors.push(error("登录用户名", "username_taken", "该用户名已被其他密钥或账户使用"));
                continue;
            }
            sqlx::query(
                "insert into legacy_keys (serial, username, password_hash, institution_code) values ($1, $2, $3, $4) \
                 on conflict (serial) do update set username = excluded.username, \
                 password_hash = excluded.password_hash, institution_code = excluded.institution_code, loaded_at = now() \
                 where legacy_keys.state = 'known'",
            )
            .bind(&serial)
            .bind(&username)
            .bind(&password_hash)
            .bind(institution_code.as_deref())
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
            report.loaded += 1;
        }
        let record = audit::Record {
            actor,
            action: "legacy_keys.import",
            object: "legacy_keys",
            outcome: Outcome::Success,
            detail: serde_json::json!({ "roots": parsed_roots.len(), "loaded": report.loaded, "rejected_rows": report.errors.len() }),
        };
        audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(report)
    }
}
