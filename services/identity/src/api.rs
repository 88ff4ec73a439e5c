//! The gRPC face of identity: turns requests into checked values, calls the registry and key operations, and maps
//! their outcomes onto statuses. Bad input is `INVALID_ARGUMENT` listing every field at fault at once.

use kit::audit::Actor;
use kit::service::Runtime;
use kit::status::{Violation, invalid, refuse};
use proto::common::Caller;
use proto::identity::identity_server::Identity;
use proto::identity::{
    ActivateKeyRequest, CertificateInfo, CreateAccountRequest, CreatedAccount, GetTrustBundleRequest,
    ImportLegacyKeysRequest, IssueCertificateRequest, IssuedCertificate, ListAccountsReply, ListAccountsRequest,
    ListAgenciesReply, ListAgenciesRequest, ListCertificatesReply, ListCertificatesRequest, ListKeyApplicationsReply,
    ListKeyApplicationsRequest, LoginReply, LoginRequest, LogoutReply, LogoutRequest, RenewCertificateRequest,
    RevokeCertificateRequest, TrustBundle,
};
use proto::identity::{
    ApiClient, ApiClientCertificate, AuthenticateApiClientRequest, AuthenticatedApiClient, CreateApiClientRequest,
    IssueApiClientCertificateRequest, IssuedApiClientCertificate, ListApiClientsReply, ListApiClientsRequest,
    RecordApiCallReply, RecordApiCallRequest, RegisterApiClientCertificateRequest, RetireRegistryEntryRequest,
    RevokeApiClientCertificateRequest, UpdateApiClientRequest,
};
use proto::identity::{
    ApplyForKeyRequest, ChangeKeyPasswordRequest, GetKeyApplicationRequest, ImportFileRequest, ImportReport,
    KeyApplication, RegistryEntry, UpsertRegistryEntryRequest, VerifyUnitNameReply, VerifyUnitNameRequest,
    WithdrawKeyApplicationRequest,
};
use proto::names::Namespace;
use secrecy::SecretString;
use tonic::{Code, Request, Response, Status};

use std::sync::Arc;

use crate::accounts::{Accounts, NewStaffAccount, STAFF_ROLES, check_username};
use crate::api_clients::{self, ApiClients};
use crate::ca::CertificateAuthority;
use crate::certificates::Certificates;
use crate::keys::{self, Keys, NewApplication, check_id_number, check_password, reject_if_any};
use crate::registry;
use crate::secrets::{IdNumberHasher, PasswordHasher};

#[derive(Debug, Clone)]
pub struct IdentityApi {
    runtime: Runtime,
    keys: Keys,
    accounts: Accounts,
    api_clients: ApiClients,
}

impl IdentityApi {
    pub fn new(
        runtime: Runtime,
        namespace: Namespace,
        id_number_key: SecretString,
        ca: Option<CertificateAuthority>,
        agency_roots: Vec<Vec<u8>>,
    ) -> Self {
        let keys = Keys {
            pool: runtime.pool.clone(),
            namespace,
            passwords: PasswordHasher::new(),
            id_numbers: IdNumberHasher::new(id_number_key),
        };
        let certificates = Certificates { keys: keys.clone(), ca: ca.map(std::sync::Arc::new) };
        let api_clients = ApiClients { certificates: certificates.clone(), agency_roots: Arc::new(agency_roots) };
        Self { runtime, keys, accounts: Accounts { certificates }, api_clients }
    }

    fn certificates(&self) -> &Certificates {
        &self.accounts.certificates
    }
}

fn actor(caller: Option<Caller>) -> Actor {
    let caller = caller.unwrap_or_default();
    let or = |value: String, default: &str| if value.is_empty() { default.to_owned() } else { value };
    Actor {
        name: or(caller.actor, "anonymous"),
        role: or(caller.role, "public"),
        certificate_serial: Some(caller.certificate_serial).filter(|serial| !serial.is_empty()),
        remote_address: Some(caller.remote_address).filter(|address| !address.is_empty()),
    }
}

/// Only the province admin loads or edits the registry (and the platform's own command line, as "system").
fn require_province_admin(actor: &Actor) -> Result<(), Status> {
    require_role(actor, &["province_admin"], "只有省级管理员可以维护编制通数据")
}

/// Refuses callers whose role is not among `roles`; "system" (the command line on the platform's machine, which
/// already holds the database and NATS credentials) may do anything.
fn require_role(actor: &Actor, roles: &[&str], message: &str) -> Result<(), Status> {
    if actor.role == "system" || roles.contains(&actor.role.as_str()) {
        Ok(())
    } else {
        Err(refuse(Code::PermissionDenied, "forbidden", message))
    }
}

/// The registry is the province admin's, and the establishment office's system may keep it too (registry:write).
fn require_registry_writer(caller: &Caller) -> Result<(), Status> {
    if caller.role == "api_client" && caller.scopes.iter().any(|scope| scope == "registry:write") {
        return Ok(());
    }
    require_province_admin(&actor(Some(caller.clone())))
}

const CA_ROLES: [&str; 1] = ["ca_operator"];
const CA_READERS: [&str; 2] = ["ca_operator", "province_admin"];
const ACCOUNT_ADMINS: [&str; 2] = ["province_admin", "security_admin"];

fn import_failed(error: spreadsheet::TableError) -> Status {
    let code = match error {
        spreadsheet::TableError::MissingColumns(_) => "missing_columns",
        spreadsheet::TableError::Empty => "empty_file",
        _ => "unreadable_file",
    };
    invalid(vec![Violation::new("file", code, error.to_string())])
}

#[tonic::async_trait]
impl Identity for IdentityApi {
    async fn get_status(
        &self,
        _request: Request<proto::common::GetStatusRequest>,
    ) -> Result<Response<proto::common::ServiceStatus>, Status> {
        self.runtime.status().await.map(Response::new)
    }

    async fn import_registry(&self, request: Request<ImportFileRequest>) -> Result<Response<ImportReport>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        require_province_admin(&actor)?;
        let table = spreadsheet::read(&request.file, &registry::REGISTRY_COLUMNS).map_err(import_failed)?;
        let report = registry::import_registry(&self.runtime.pool, &self.keys.namespace, &actor.name, &table)
            .await
            .map_err(kit::db::status)?;
        audit_import(&self.runtime, &actor, "registry.import", &report).await?;
        Ok(Response::new(report))
    }

    async fn import_agencies(&self, request: Request<ImportFileRequest>) -> Result<Response<ImportReport>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        require_province_admin(&actor)?;
        let table = spreadsheet::read(&request.file, &registry::AGENCY_COLUMNS).map_err(import_failed)?;
        let report = registry::import_agencies(&self.runtime.pool, &table).await.map_err(kit::db::status)?;
        audit_import(&self.runtime, &actor, "agencies.import", &report).await?;
        Ok(Response::new(report))
    }

    async fn upsert_registry_entry(
        &self,
        request: Request<UpsertRegistryEntryRequest>,
    ) -> Result<Response<RegistryEntry>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        require_registry_writer(&caller)?;
        let actor = actor(Some(caller));
        let entry = request.entry.unwrap_or_default();
        let mut violations = Vec::new();
        if entry.institution_code.trim().is_empty() {
            violations.push(Violation::new("institution_code", "required", "机构编码不能为空"));
        }
        if entry.unit_name.trim().is_empty() {
            violations.push(Violation::new("unit_name", "required", "单位名称不能为空"));
        }
        let credit_code = validators::parse_credit_code(&entry.credit_code).unwrap_or_else(|error| {
            violations.push(Violation::new("credit_code", error.code(), error.to_string()));
            String::new()
        });
        if entry.unit_type.trim().is_empty() {
            violations.push(Violation::new("unit_type", "required", "单位类型不能为空"));
        }
        if entry.region_code.len() != 6 || !entry.region_code.bytes().all(|byte| byte.is_ascii_digit()) {
            violations.push(Violation::new("region_code", "invalid_region_code", "所属行政区划应为 6 位数字代码"));
        }
        if entry.agency_code.trim().is_empty() {
            violations.push(Violation::new("agency_code", "required", "所属经办机构不能为空"));
        }
        reject_if_any(violations)?;
        let entry = RegistryEntry { credit_code, retired_at: None, retired_reason: String::new(), ..entry };
        let mut transaction = self.runtime.pool.begin().await.map_err(kit::db::status)?;
        if let Err(violation) = registry::upsert_entry(&mut transaction, &self.keys.namespace, &actor.name, &entry)
            .await
            .map_err(kit::db::status)?
        {
            return Err(invalid(vec![violation]));
        }
        let object = format!("registry_entry:{}", entry.institution_code);
        let record = kit::audit::Record {
            actor: &actor,
            action: "registry.upsert",
            object: &object,
            outcome: kit::audit::Outcome::Success,
            detail: serde_json::json!({ "unit_name": entry.unit_name }),
        };
        kit::audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(Response::new(entry))
    }

    async fn verify_unit_name(
        &self,
        request: Request<VerifyUnitNameRequest>,
    ) -> Result<Response<VerifyUnitNameReply>, Status> {
        let request = request.into_inner();
        let mut violations = Vec::new();
        if !registry::is_known_type(&request.unit_type) {
            violations.push(Violation::new("unit_type", "unknown_unit_type", "请选择单位类型：机关或事业单位"));
        }
        if request.unit_name.trim().is_empty() {
            violations.push(Violation::new("unit_name", "required", "请填写单位名称"));
        }
        reject_if_any(violations)?;
        let pool = &self.runtime.pool;
        let entry = registry::find_by_name(pool, &request.unit_name).await.map_err(kit::db::status)?;
        match entry {
            Some(entry) if registry::type_matches(&entry.unit_type, &request.unit_type) => {
                let keys = self.keys.list_for_unit(&entry.institution_code).await.map_err(kit::db::status)?;
                Ok(Response::new(VerifyUnitNameReply { matched: true, entry: Some(entry), candidates: vec![], keys }))
            }
            _ => {
                let candidates = registry::closest_names(pool, &request.unit_name, 5).await.map_err(kit::db::status)?;
                Ok(Response::new(VerifyUnitNameReply { matched: false, entry: None, candidates, keys: vec![] }))
            }
        }
    }

    async fn apply_for_key(&self, request: Request<ApplyForKeyRequest>) -> Result<Response<KeyApplication>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        let mut violations = Vec::new();
        let category = validators::text::normalize_name(&request.category);
        if !category.is_empty() && category != keys::CATEGORY && category != "pension_key" {
            violations.push(Violation::new("category", "unknown_category", "申请类别应为“机关事业养老保险密钥注册”"));
        }
        if !registry::is_known_type(&request.unit_type) {
            violations.push(Violation::new("unit_type", "unknown_unit_type", "请选择单位类型：机关或事业单位"));
        }
        let applicant_name = request.applicant_name.trim().to_owned();
        if applicant_name.is_empty() {
            violations.push(Violation::new("applicant_name", "required", "请填写申请人姓名"));
        } else if applicant_name.chars().count() > 60 {
            violations.push(Violation::new("applicant_name", "too_long", "申请人姓名不能超过60个字"));
        }
        let applicant_id = check_id_number("applicant_id_number", &request.applicant_id_number, &mut violations);
        let phone = validators::text::parse_phone(&request.phone);
        if phone.is_none() {
            violations.push(Violation::new("phone", "invalid_phone", "联系电话应为11位手机号码或带区号的固定电话"));
        }
        check_password("password", &request.password, &mut violations);
        let entry = if request.unit_name.trim().is_empty() {
            violations.push(Violation::new("unit_name", "required", "请填写单位名称"));
            None
        } else {
            let entry =
                registry::find_by_name(&self.runtime.pool, &request.unit_name).await.map_err(kit::db::status)?;
            match entry {
                Some(entry) if registry::type_matches(&entry.unit_type, &request.unit_type) => Some(entry),
                _ => {
                    violations.push(Violation::new(
                        "unit_name",
                        "unit_not_in_registry",
                        "单位名称与编制通登记的名称不一致，请先校验单位名称",
                    ));
                    None
                }
            }
        };
        let (Some(entry), Some(applicant_id), Some(phone), true) = (entry, applicant_id, phone, violations.is_empty())
        else {
            let status = invalid(violations);
            self.keys.audit_refusal(&actor, "key_application.apply", "new", &status).await;
            return Err(status);
        };
        let application = NewApplication {
            institution_code: entry.institution_code,
            applicant_name,
            applicant_id,
            phone,
            password: SecretString::from(request.password),
        };
        self.keys.apply(&actor, application).await.map(Response::new)
    }

    async fn get_key_application(
        &self,
        request: Request<GetKeyApplicationRequest>,
    ) -> Result<Response<KeyApplication>, Status> {
        self.keys.get_public(&request.into_inner().application_id).await.map(Response::new)
    }

    async fn withdraw_key_application(
        &self,
        request: Request<WithdrawKeyApplicationRequest>,
    ) -> Result<Response<KeyApplication>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        let mut violations = Vec::new();
        let applicant_id = check_id_number("applicant_id_number", &request.applicant_id_number, &mut violations);
        let Some(applicant_id) = applicant_id else { return Err(invalid(violations)) };
        self.keys.withdraw(&actor, &request.application_id, &applicant_id).await.map(Response::new)
    }

    async fn change_key_password(
        &self,
        request: Request<ChangeKeyPasswordRequest>,
    ) -> Result<Response<KeyApplication>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        let mut violations = Vec::new();
        let applicant_id = check_id_number("applicant_id_number", &request.applicant_id_number, &mut violations);
        check_password("new_password", &request.new_password, &mut violations);
        let (Some(applicant_id), true) = (applicant_id, violations.is_empty()) else {
            return Err(invalid(violations));
        };
        self.keys
            .change_password(&actor, &request.application_id, &applicant_id, SecretString::from(request.new_password))
            .await
            .map(Response::new)
    }

    async fn list_agencies(
        &self,
        _request: Request<ListAgenciesRequest>,
    ) -> Result<Response<ListAgenciesReply>, Status> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("select code, name, region_code from agencies order by code")
                .fetch_all(&self.runtime.pool)
                .await
                .map_err(kit::db::status)?;
        let agencies = rows
            .into_iter()
            .map(|(code, name, region_code)| proto::identity::Agency { code, name, region_code })
            .collect();
        Ok(Response::new(ListAgenciesReply { agencies }))
    }

    async fn list_key_applications(
        &self,
        request: Request<ListKeyApplicationsRequest>,
    ) -> Result<Response<ListKeyApplicationsReply>, Status> {
        let request = request.into_inner();
        require_role(&actor(request.caller), &CA_READERS, "只有CA操作员和省级管理员可以查看密钥申请")?;
        let limit = crate::certificates::limit_or_default(request.limit);
        let applications = self.keys.list(&request.state, limit).await?;
        Ok(Response::new(ListKeyApplicationsReply { applications }))
    }

    async fn issue_certificate(
        &self,
        request: Request<IssueCertificateRequest>,
    ) -> Result<Response<IssuedCertificate>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        require_role(&actor, &CA_ROLES, "只有CA操作员可以制作证书")?;
        self.certificates()
            .issue_for_application(&actor, &request.application_id, &request.csr_pem)
            .await
            .map(Response::new)
    }

    async fn renew_certificate(
        &self,
        request: Request<RenewCertificateRequest>,
    ) -> Result<Response<IssuedCertificate>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        require_role(&actor, &CA_ROLES, "只有CA操作员可以更新证书")?;
        self.certificates().renew(&actor, &request.serial, &request.csr_pem).await.map(Response::new)
    }

    async fn revoke_certificate(
        &self,
        request: Request<RevokeCertificateRequest>,
    ) -> Result<Response<CertificateInfo>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        require_role(&actor, &CA_ROLES, "只有CA操作员可以吊销证书")?;
        self.certificates().revoke(&actor, &request.serial, &request.reason).await.map(Response::new)
    }

    async fn list_certificates(
        &self,
        request: Request<ListCertificatesRequest>,
    ) -> Result<Response<ListCertificatesReply>, Status> {
        let request = request.into_inner();
        require_role(&actor(request.caller), &CA_READERS, "只有CA操作员和省级管理员可以查看证书")?;
        let certificates = self.certificates().list(&request.username, request.limit).await?;
        Ok(Response::new(ListCertificatesReply { certificates }))
    }

    async fn get_trust_bundle(
        &self,
        _request: Request<GetTrustBundleRequest>,
    ) -> Result<Response<TrustBundle>, Status> {
        self.certificates().trust_bundle().await.map(Response::new)
    }

    async fn import_legacy_keys(
        &self,
        request: Request<ImportLegacyKeysRequest>,
    ) -> Result<Response<ImportReport>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        require_province_admin(&actor)?;
        let table = spreadsheet::read(&request.file, &crate::accounts::LEGACY_KEY_COLUMNS).map_err(import_failed)?;
        self.accounts.import_legacy(&request.roots_pem, &table, &actor).await.map(Response::new)
    }

    async fn create_account(&self, request: Request<CreateAccountRequest>) -> Result<Response<CreatedAccount>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        require_role(&actor, &ACCOUNT_ADMINS, "只有省级管理员和安全管理员可以创建账户")?;
        let mut violations = Vec::new();
        let username = request.username.trim().to_owned();
        check_username("username", &username, &mut violations);
        let display_name = request.display_name.trim().to_owned();
        if display_name.is_empty() || display_name.chars().count() > 60 {
            violations.push(Violation::new("display_name", "invalid_display_name", "请填写姓名（不超过60个字）"));
        }
        if !STAFF_ROLES.contains(&request.role.as_str()) {
            violations.push(Violation::new(
                "role",
                "unknown_role",
                "请选择角色：经办机构审核员、CA操作员、省级管理员、安全管理员或审计管理员",
            ));
        }
        let agency_code = Some(request.agency_code.trim().to_owned()).filter(|code| !code.is_empty());
        match (&agency_code, request.role == "agency_reviewer") {
            (None, true) => {
                violations.push(Violation::new("agency_code", "required", "经办机构审核员须选择所属经办机构"))
            }
            (Some(_), false) => {
                violations.push(Violation::new("agency_code", "not_applicable", "只有经办机构审核员属于经办机构"))
            }
            (Some(code), true) => {
                let known: bool = sqlx::query_scalar("select exists (select 1 from agencies where code = $1)")
                    .bind(code)
                    .fetch_one(&self.runtime.pool)
                    .await
                    .map_err(kit::db::status)?;
                if !known {
                    violations.push(Violation::new("agency_code", "unknown_agency", "没有这个经办机构"));
                }
            }
            (None, false) => {}
        }
        check_password("password", &request.password, &mut violations);
        if !violations.is_empty() {
            let status = invalid(violations);
            self.keys.audit_refusal_of(&actor, "account.create", &format!("account:{username}"), &status).await;
            return Err(status);
        }
        let account = NewStaffAccount {
            username,
            display_name,
            role: request.role,
            agency_code,
            password: SecretString::from(request.password),
        };
        let (account_id, certificate) = self.certificates().create_staff_account(&actor, account).await?;
        let account = self.accounts.get_by_id(account_id).await?;
        Ok(Response::new(CreatedAccount { account: Some(account), certificate: Some(certificate) }))
    }

    async fn list_accounts(
        &self,
        request: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsReply>, Status> {
        let request = request.into_inner();
        require_role(&actor(request.caller), &ACCOUNT_ADMINS, "只有省级管理员和安全管理员可以查看账户")?;
        Ok(Response::new(ListAccountsReply { accounts: self.accounts.list().await? }))
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        let password = SecretString::from(request.password);
        self.accounts.login(&actor, &request.certificate_der, &request.username, password).await.map(Response::new)
    }

    async fn logout(&self, request: Request<LogoutRequest>) -> Result<Response<LogoutReply>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        let object = format!("account:{}", actor.name);
        let record = kit::audit::Record {
            actor: &actor,
            action: "logout",
            object: &object,
            outcome: kit::audit::Outcome::Success,
            detail: serde_json::json!({ "reason": request.reason }),
        };
        let mut connection = self.runtime.pool.acquire().await.map_err(kit::db::status)?;
        kit::audit::append(&mut connection, &record).await.map_err(kit::db::status)?;
        Ok(Response::new(LogoutReply {}))
    }

    async fn activate_key(&self, request: Request<ActivateKeyRequest>) -> Result<Response<LoginReply>, Status> {
        let mut request = request.into_inner();
        let actor = actor(request.caller.take());
        self.accounts.activate(&actor, request).await.map(Response::new)
    }

    async fn retire_registry_entry(
        &self,
        request: Request<RetireRegistryEntryRequest>,
    ) -> Result<Response<RegistryEntry>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        require_registry_writer(&caller)?;
        let actor = actor(Some(caller));
        let reason = validators::text::normalize_name(&request.reason);
        let mut violations = Vec::new();
        if request.institution_code.trim().is_empty() {
            violations.push(Violation::new("institution_code", "required", "机构编码不能为空"));
        }
        if reason.is_empty() || reason.chars().count() > 200 {
            violations.push(Violation::new("reason", "invalid_reason", "请填写撤销原因（至多 200 个字）"));
        }
        reject_if_any(violations)?;
        let mut transaction = self.runtime.pool.begin().await.map_err(kit::db::status)?;
        let entry = registry::retire_entry(
            &mut transaction,
            &self.keys.namespace,
            &actor.name,
            request.institution_code.trim(),
            &reason,
        )
        .await
        .map_err(kit::db::status)?
        .ok_or_else(|| {
            refuse(
                Code::NotFound,
                "registry_entry_not_found",
                format!("编制通中没有机构编码为 {} 的单位", request.institution_code.trim()),
            )
        })?;
        let object = format!("registry_entry:{}", entry.institution_code);
        let record = kit::audit::Record {
            actor: &actor,
            action: "registry.retire",
            object: &object,
            outcome: kit::audit::Outcome::Success,
            detail: serde_json::json!({ "unit_name": entry.unit_name, "reason": reason }),
        };
        kit::audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(Response::new(entry))
    }

    async fn create_api_client(&self, request: Request<CreateApiClientRequest>) -> Result<Response<ApiClient>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        require_province_admin(&actor)?;
        let client_id = request.client_id.trim().to_owned();
        let mut violations = Vec::new();
        api_clients::check_client_id(&client_id, &mut violations);
        let settings = api_clients::check_settings(
            &request.display_name,
            &request.scopes,
            request.calls_per_minute,
            &mut violations,
        );
        reject_if_any(violations)?;
        self.api_clients.create(&actor, &client_id, settings).await.map(Response::new)
    }

    async fn update_api_client(&self, request: Request<UpdateApiClientRequest>) -> Result<Response<ApiClient>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        require_province_admin(&actor)?;
        let mut violations = Vec::new();
        let settings = api_clients::check_settings(
            &request.display_name,
            &request.scopes,
            request.calls_per_minute,
            &mut violations,
        );
        let state = match request.state.trim() {
            "" | "active" => "active",
            "disabled" => "disabled",
            _ => {
                violations.push(Violation::new("state", "invalid_state", "状态应为 active（启用）或 disabled（停用）"));
                "active"
            }
        };
        reject_if_any(violations)?;
        self.api_clients.update(&actor, request.client_id.trim(), settings, state).await.map(Response::new)
    }

    async fn list_api_clients(
        &self,
        request: Request<ListApiClientsRequest>,
    ) -> Result<Response<ListApiClientsReply>, Status> {
        let actor = actor(request.into_inner().caller);
        require_province_admin(&actor)?;
        let clients = self.api_clients.list().await?;
        Ok(Response::new(ListApiClientsReply { clients, scopes: api_clients::scope_descriptions() }))
    }

    async fn issue_api_client_certificate(
        &self,
        request: Request<IssueApiClientCertificateRequest>,
    ) -> Result<Response<IssuedApiClientCertificate>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        require_province_admin(&actor)?;
        self.api_clients.issue_certificate(&actor, request.client_id.trim(), &request.csr_pem).await.map(Response::new)
    }

    async fn register_api_client_certificate(
        &self,
        request: Request<RegisterApiClientCertificateRequest>,
    ) -> Result<Response<ApiClientCertificate>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        require_province_admin(&actor)?;
        self.api_clients
            .register_certificate(&actor, request.client_id.trim(), &request.certificate_pem)
            .await
            .map(Response::new)
    }

    async fn revoke_api_client_certificate(
        &self,
        request: Request<RevokeApiClientCertificateRequest>,
    ) -> Result<Response<ApiClientCertificate>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        require_province_admin(&actor)?;
        self.api_clients.revoke_certificate(&actor, &request.serial, &request.reason).await.map(Response::new)
    }

    async fn authenticate_api_client(
        &self,
        request: Request<AuthenticateApiClientRequest>,
    ) -> Result<Response<AuthenticatedApiClient>, Status> {
        self.api_clients.authenticate(&request.into_inner().certificate_der).await.map(Response::new)
    }

    async fn record_api_call(
        &self,
        request: Request<RecordApiCallRequest>,
    ) -> Result<Response<RecordApiCallReply>, Status> {
        let request = request.into_inner();
        let actor = actor(request.caller);
        if actor.role != "api_client" {
            return Err(refuse(Code::PermissionDenied, "forbidden", "只记录接口客户端的调用"));
        }
        let outcome = match request.outcome.as_str() {
            "success" => kit::audit::Outcome::Success,
            "refused" => kit::audit::Outcome::Refused,
            _ => kit::audit::Outcome::Failed,
        };
        self.api_clients
            .record_call(&actor, &request.method, outcome, &request.code, &request.reason, &request.detail_json)
            .await?;
        Ok(Response::new(RecordApiCallReply {}))
    }
}

async fn audit_import(runtime: &Runtime, actor: &Actor, action: &str, report: &ImportReport) -> Result<(), Status> {
    let record = kit::audit::Record {
        actor,
        action,
        object: action.split('.').next().unwrap_or(action),
        outcome: kit::audit::Outcome::Success,
        detail: serde_json::json!({ "loaded": report.loaded, "rejected_rows": report.errors.len() }),
    };
    let mut connection = runtime.pool.acquire().await.map_err(kit::db::status)?;
    kit::audit::append(&mut connection, &record).await.map_err(kit::db::status)?;
    Ok(())
}
