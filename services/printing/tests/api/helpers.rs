//! Units, personnel and printing for a test, and a unit ready to declare.

use std::time::Duration;

use kit::admin::Readiness;
use kit::rpc::NatsChannel;
use kit::service::{Platform, ServiceConfig};
use kit::shutdown::CancellationToken;
use kit::testing::{TestDatabase, isolated_nats};
use proto::common::Caller;
use proto::names::Service;
use proto::personnel::personnel_client::PersonnelClient;
use proto::printing::printing_client::PrintingClient;
use proto::units::units_client::UnitsClient;
use sqlx::PgPool;

pub const AGENCY: &str = "230500";

pub struct TestPlatform {
    pub platform: Platform,
    pub units: UnitsClient<NatsChannel>,
    pub personnel: PersonnelClient<NatsChannel>,
    pub printing: PrintingClient<NatsChannel>,
    pub units_pool: PgPool,
    pub printing_pool: PgPool,
    pub printing_config: printing::Config,
    services: CancellationToken,
    printing_instance: CancellationToken,
    _databases: Vec<TestDatabase>,
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        self.services.cancel();
        self.printing_instance.cancel();
    }
}

fn service(database: &TestDatabase) -> ServiceConfig {
    ServiceConfig {
        database: database.config(),
        grpc_addr: Some("127.0.0.1:0".parse().expect("addr")),
        admin_addr: None,
    }
}

pub async fn spawn() -> TestPlatform {
    let platform = Platform::connect_with(&isolated_nats(), "printing-test", Readiness::default()).await.expect("nats");
    platform.wait_connected(Duration::from_secs(10)).await.expect("nats connected");
    kit::testing::sweep_stale_test_streams(&async_nats::jetstream::new(platform.nats.clone())).await;
    let services = CancellationToken::new();
    let (units_db, personnel_db, printing_db) =
        (TestDatabase::create().await, TestDatabase::create().await, TestDatabase::create().await);
    let units_config = units::Config { service: service(&units_db), ..units::Config::default() };
    let app = units::build(&units_config, &platform, false).await.expect("units builds");
    tokio::spawn(app.run(services.clone()));
    let personnel_config = personnel::Config {
        service: service(&personnel_db),
        population_registry_url: String::new(),
        ..personnel::Config::default()
    };
    let app = personnel::build(&personnel_config, &platform, false).await.expect("personnel builds");
    tokio::spawn(app.run(services.clone()));
    let printing_config = printing::Config { service: service(&printing_db), ..printing::Config::default() };
    let printing_instance = CancellationToken::new();
    let app = printing::build(&printing_config, &platform, false).await.expect("printing builds");
    tokio::spawn(app.run(printing_instance.clone()));
    let test = TestPlatform {
        units: UnitsClient::new(platform.channel(Service::Units)),
        personnel: PersonnelClient::new(platform.channel(Service::Personnel)),
        printing: PrintingClient::new(platform.channel(Service::Printing)),
        units_pool: kit::db::connect(&units_db.config(), "unused").await.expect("pool"),
        printing_pool: kit::db::connect(&printing_db.config(), "unused").await.expect("pool"),
        platform,
        printing_config,
        services,
        printing_instance,
        _databases: vec![units_db, personnel_db, printing_db],
    };
    test.wait_until_printing_answers().await;
    test
}

impl TestPlatform {
    async fn wait_until_printing_answers(&self) {
        kit::testing::eventually(Duration::from_secs(10), "printing answers", || {
            let mut client = self.printing.clone();
            async move { client.get_status(proto::common::GetStatusRequest {}).await.is_ok() }
        })
        .await;
    }

    /// Kills the printing instance and starts another on the same database, as a crash and a restart do.
    pub async fn restart_printing(&mut self) {
        self.printing_instance.cancel();
        self.printing_instance = CancellationToken::new();
        let app = printing::build(&self.printing_config, &self.platform, false).await.expect("printing builds again");
        tokio::spawn(app.run(self.printing_instance.clone()));
        self.wait_until_printing_answers().await;
    }

    /// A unit with a complete record, two staff members and a retiree of before the reform, declared.
    pub async fn declared_unit(&self, unit: &str) -> proto::units::Declaration {
        sqlx::query(
            "insert into units (institution_code, unit_name, credit_code, unit_type, region_code, agency_code, \
             created_by_event, unit_type_code, agency_name) values ($1, '双鸭山市财政局', '11230500MB0000010M', '机关', \
             '230500', $2, 'test', '10', '双鸭山市社会保险事业中心')",
        )
        .bind(unit)
        .bind(AGENCY)
        .execute(&self.units_pool)
        .await
        .expect("draft record");
        let record = proto::units::UnitRecordInput {
            unit_type: "机关".into(),
            region_code: "230502".into(),
            subordination: "市".into(),
            funding_source: "全额拨款".into(),
            legal_representative: "王建国".into(),
            address: "双鸭山市尖山区新兴大街88号".into(),
            post_code: "155100".into(),
            contact_name: "刘敏".into(),
            contact_phone: "0469-4221234".into(),
            clerk_name: "刘敏".into(),
            clerk_phone: "13904691111".into(),
            bank_name: "中国工商银行双鸭山分行".into(),
            bank_account_name: "双鸭山市财政局".into(),
            bank_account: "0907021009000012345".into(),
            administrative_posts: "35".into(),
            ..Default::default()
        };
        let update = proto::units::UpdateUnitRecordRequest { caller: operator(unit), record: Some(record) };
        self.units.clone().update_unit_record(update).await.expect("record saved");
        for person in people() {
            let request = proto::personnel::CreatePersonRequest {
                caller: operator(unit),
                person: Some(person),
                idempotency_key: String::new(),
            };
            self.personnel.clone().create_person(request).await.expect("person saved");
        }
        let declare = proto::units::DeclareRequest { caller: operator(unit), ..Default::default() };
        self.units.clone().declare(declare).await.expect("declared").into_inner()
    }

    pub async fn documents(&self, caller: Option<Caller>, declaration_id: &str) -> proto::printing::ListDocumentsReply {
        let request = proto::printing::ListDocumentsRequest { caller, declaration_id: declaration_id.into() };
        self.printing.clone().list_documents(request).await.expect("documents").into_inner()
    }

    /// Waits until the declaration's forms are rendered.
    pub async fn rendered(&self, unit: &str, declaration_id: &str) -> proto::printing::ListDocumentsReply {
        kit::testing::eventually(Duration::from_secs(30), "the forms are rendered", || async {
            let request =
                proto::printing::ListDocumentsRequest { caller: operator(unit), declaration_id: declaration_id.into() };
            self.printing.clone().list_documents(request).await.is_ok_and(|reply| reply.into_inner().rendered)
        })
        .await;
        self.documents(operator(unit), declaration_id).await
    }

    /// A whole document, read chunk by chunk.
    pub async fn download(&self, caller: Option<Caller>, document_id: &str) -> Result<Vec<u8>, tonic::Status> {
        let mut pdf = Vec::new();
        loop {
            let request = proto::printing::ReadDocumentRequest {
                caller: caller.clone(),
                document_id: document_id.into(),
                offset: pdf.len() as u64,
            };
            let chunk = self.printing.clone().read_document(request).await?.into_inner();
            let size = chunk.document.map(|document| document.size).unwrap_or_default();
            pdf.extend(chunk.data);
            if pdf.len() as u64 >= size {
                return Ok(pdf);
            }
        }
    }
}

pub fn operator(unit: &str) -> Option<Caller> {
    Some(Caller {
        actor: format!("{unit}-01"),
        role: "unit_operator".into(),
        institution_code: unit.into(),
        ..Caller::default()
    })
}

pub fn reviewer(agency: &str) -> Option<Caller> {
    Some(Caller {
        actor: "reviewer".into(),
        role: "agency_reviewer".into(),
        agency_code: agency.into(),
        ..Caller::default()
    })
}

pub fn people() -> Vec<proto::personnel::PersonInput> {
    let staff = |name: &str, id_number: &str| proto::personnel::PersonInput {
        kind: "staff".into(),
        name: name.into(),
        id_type: "01".into(),
        id_number: id_number.into(),
        funding_form: "全额拨款".into(),
        work_start: "2012-07-01".into(),
        joined_unit: "2015-03-01".into(),
        personnel_status: "公务员".into(),
        establishment: "编制内".into(),
        accepted_warnings: vec!["population_unavailable".into()],
        ..Default::default()
    };
    vec![
        staff("李娜", "230502199002152344"),
        staff("张伟", "230502198001011238"),
        proto::personnel::PersonInput {
            kind: "retiree_pre_reform".into(),
            name: "胡建国".into(),
            id_type: "01".into(),
            id_number: "230502195509153911".into(),
            funding_form: "1".into(),
            work_start: "1975-08-01".into(),
            personnel_status: "工勤技能人员".into(),
            establishment: "编制内".into(),
            retirement_date: "2014-09-30".into(),
            retirement_category: "正常退休".into(),
            monthly_pension: "3200.00".into(),
            pay_start_month: "2014-10".into(),
            pay_bank: "中国农业银行".into(),
            pay_account: "6228480123456789012".into(),
            accepted_warnings: vec!["population_unavailable".into(), "retired_below_normal_age".into()],
            ..Default::default()
        },
    ]
}
