//! The forms of a declaration: their text as `pdftotext` reads it against the declared snapshot, the embedded and
//! subset font, a page as PNG (kept under `.artifacts/printing/`), who may read them (every download audited),
//! rendering once however often the event arrives or the renderer dies, and verification of a digest.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kit::convert::hex;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::helpers::{AGENCY, TestPlatform, operator, reviewer, spawn};

fn artifacts() -> PathBuf {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.artifacts/printing");
    std::fs::create_dir_all(&folder).expect("artifacts folder");
    folder
}

/// The PDF's text without white space: the layout's spacing and line breaks are not what is compared.
fn text_of(pdf: &[u8]) -> String {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), pdf).expect("write");
    let output = Command::new("pdftotext").arg("-layout").arg(file.path()).arg("-").output().expect("pdftotext runs");
    assert!(output.status.success(), "pdftotext reads the PDF");
    String::from_utf8(output.stdout).expect("utf-8").chars().filter(|c| !c.is_whitespace()).collect()
}

async fn download_kind(
    platform: &TestPlatform,
    unit: &str,
    documents: &proto::printing::ListDocumentsReply,
    kind: &str,
) -> Vec<u8> {
    let document = documents.documents.iter().find(|document| document.kind == kind).expect(kind);
    let pdf = platform.download(operator(unit), &document.document_id).await.expect("downloaded");
    assert_eq!(hex(&Sha256::digest(&pdf)), document.sha256, "{kind}: the stored digest is the PDF's");
    assert_eq!(pdf.len() as u64, document.size);
    pdf
}

#[tokio::test]
async fn the_forms_print_the_declared_snapshot_field_by_field() {
    let platform = spawn().await;
    let unit = "230500041";
    let declaration = platform.declared_unit(unit).await;
    let documents = platform.rendered(unit, &declaration.declaration_id).await;
    let kinds: Vec<&str> = documents.documents.iter().map(|document| document.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["unit_form", "staff_roster", "retiree_pre_reform_roster", "retiree_post_reform_roster", "bundle"]
    );

    let unit_form = text_of(&download_kind(&platform, unit, &documents, "unit_form").await);
    let record = declaration.unit_snapshot.clone().expect("declared record");
    for expected in [
        "机关事业单位养老保险参保单位登记表",
        record.unit_name.as_str(),
        record.credit_code.as_str(),
        record.institution_code.as_str(),
        record.address.as_str(),
        record.post_code.as_str(),
        record.contact_name.as_str(),
        record.contact_phone.as_str(),
        record.clerk_phone.as_str(),
        record.bank_name.as_str(),
        record.bank_account.as_str(),
        record.legal_representative.as_str(),
        "机关",
        "双鸭山市社会保险事业中心",
        "全额拨款",
        "市",
        "35",
        "单位（盖章）",
        "经办人",
        "经办机构审核意见",
        "第1页共1页",
        &declaration.declaration_id,
    ] {
        assert!(unit_form.contains(expected), "{expected:?} on the unit form:\n{unit_form}");
    }

    let staff = text_of(&download_kind(&platform, unit, &documents, "staff_roster").await);
    for expected in [
        "工作人员参保登记花名册",
        "李娜",
        "230502199002152344",
        "张伟",
        "230502198001011238",
        "女",
        "1990-02-15",
        "全额拨款",
        "2012-07-01",
        "2015-03-01",
        "公务员",
        "本页2人",
        "合计2人",
        "统一社会信用代码：11230500MB0000010M",
    ] {
        assert!(staff.contains(expected), "{expected:?} on the staff roster:\n{staff}");
    }
    assert!(!staff.contains("胡建国"), "retirees are on their own roster");
    let retirees = text_of(&download_kind(&platform, unit, &documents, "retiree_pre_reform_roster").await);
    for expected in
        ["2014年10月1日前退休人员参保登记花名册", "胡建国", "230502195509153911", "2014-09-30", "正常退休", "3200.00"]
    {
        assert!(retirees.contains(expected), "{expected:?} on the retiree roster:\n{retirees}");
    }
    let bundle = download_kind(&platform, unit, &documents, "bundle").await;
    let bundle_text = text_of(&bundle);
    assert!(bundle_text.contains("参保单位登记表") && bundle_text.contains("花名册") && bundle_text.contains("共4页"));

    // The font is embedded and subset; a page as the clerk sees it is kept.
    let file = artifacts().join("bundle.pdf");
    std::fs::write(&file, &bundle).expect("write");
    let fonts = Command::new("pdffonts").arg(&file).output().expect("pdffonts runs");
    let fonts = String::from_utf8_lossy(&fonts.stdout).to_string();
    assert!(fonts.contains("NotoSansCJK") && fonts.contains("yes yes yes"), "{fonts}");
    let status = Command::new("pdftoppm")
        .args(["-png", "-r", "80"])
        .arg(&file)
        .arg(artifacts().join("bundle-page"))
        .status()
        .expect("pdftoppm runs");
    assert!(status.success());

    // Every download was audited, under the unit's operator.
    let downloads: i64 =
        sqlx::query_scalar("select count(*) from kit_audit where action = 'document.download' and actor = $1")
            .bind(format!("{unit}-01"))
            .fetch_one(&platform.printing_pool)
            .await
            .expect("audit");
    assert_eq!(downloads, 4);
    // The documents are sealed at rest.
    let sealed: Vec<u8> = sqlx::query_scalar("select content_sealed from documents where kind = 'staff_roster'")
        .fetch_one(&platform.printing_pool)
        .await
        .expect("row");
    assert!(!sealed.starts_with(b"%PDF"));
}

#[tokio::test]
async fn only_the_unit_and_its_agency_read_the_forms_and_the_verification_shows_nothing_personal() {
    let platform = spawn().await;
    let unit = "230500042";
    let declaration = platform.declared_unit(unit).await;
    let documents = platform.rendered(unit, &declaration.declaration_id).await;
    let staff = documents.documents.iter().find(|document| document.kind == "staff_roster").expect("roster");

    assert!(platform.download(reviewer(AGENCY), &staff.document_id).await.is_ok(), "its agency's reviewer");
    let other_unit = platform.download(operator("230500099"), &staff.document_id).await.expect_err("another unit");
    assert_eq!(other_unit.code(), Code::NotFound);
    let other_agency = platform.download(reviewer("230100"), &staff.document_id).await.expect_err("another agency");
    assert_eq!(other_agency.code(), Code::NotFound);
    let public = platform.download(None, &staff.document_id).await.expect_err("nobody");
    assert_eq!(public.code(), Code::PermissionDenied);
    let listed = platform
        .printing
        .clone()
        .list_documents(proto::printing::ListDocumentsRequest {
            caller: operator("230500099"),
            declaration_id: String::new(),
        })
        .await;
    assert_eq!(listed.expect_err("nothing of its own").code(), Code::NotFound);

    let digest = printing::documents::snapshot_digest(&declaration.unit_digest, &declaration.roster_digest);
    let verify = |declaration_id: String, digest: String| {
        let mut client = platform.printing.clone();
        async move {
            client
                .verify_document(proto::printing::VerifyDocumentRequest { declaration_id, digest })
                .await
                .expect("answered")
                .into_inner()
        }
    };
    let verified = verify(declaration.declaration_id.clone(), digest.clone()).await;
    assert!(verified.matches);
    assert_eq!((verified.unit_name.as_str(), verified.state.as_str()), ("双鸭山市财政局", "declared"));
    let mut tampered = digest.clone().into_bytes();
    tampered[0] = if tampered[0] == b'0' { b'1' } else { b'0' };
    let refused = verify(declaration.declaration_id.clone(), String::from_utf8(tampered).expect("hex")).await;
    assert_eq!(refused, proto::printing::Verification::default(), "a tampered digest matches nothing and says nothing");
    assert!(!verify(uuid::Uuid::now_v7().to_string(), digest).await.matches);
    assert!(!verify("not-an-id".into(), "x".into()).await.matches);
}

#[tokio::test]
async fn a_declaration_is_rendered_once_however_often_its_event_arrives_or_the_renderer_dies() {
    let mut platform = spawn().await;
    let unit = "230500043";
    platform.printing_config.faults.arm("render.before_store");
    let declaration = platform.declared_unit(unit).await;
    // The renderer dies after rendering, before storing: nothing is kept, and the event is delivered again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored: i64 =
        sqlx::query_scalar("select count(*) from documents").fetch_one(&platform.printing_pool).await.expect("count");
    assert_eq!(stored, 0);
    platform.printing_config.faults.disarm("render.before_store");
    platform.restart_printing().await;
    platform.rendered(unit, &declaration.declaration_id).await;

    // The same event once more, as a redelivery under another message id would bring it.
    let subject = platform.platform.namespace.event_subject("units", "declaration.declared");
    let event = proto::events::DeclarationChanged {
        declaration_id: declaration.declaration_id.clone(),
        institution_code: unit.into(),
        agency_code: AGENCY.into(),
        state: "declared".into(),
        ..Default::default()
    };
    let jetstream = async_nats::jetstream::new(platform.platform.nats.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
    jetstream
        .publish_with_headers(subject, headers, event.encode_to_vec().into())
        .await
        .expect("published")
        .await
        .expect("stored");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let kinds: Vec<(String, i64)> = sqlx::query_as("select kind, count(*) from documents group by kind order by kind")
        .fetch_all(&platform.printing_pool)
        .await
        .expect("counts");
    assert_eq!(kinds.len(), 5);
    assert!(kinds.iter().all(|(_, count)| *count == 1), "{kinds:?}");
    let rendered: i64 = sqlx::query_scalar("select count(*) from kit_audit where action = 'documents.render'")
        .fetch_one(&platform.printing_pool)
        .await
        .expect("audit");
    assert_eq!(rendered, 1, "rendered once");
}

#[tokio::test]
async fn a_change_declaration_prints_its_changes_on_the_change_form() {
    let platform = spawn().await;
    let unit = "230500045";
    let first = platform.declared_unit(unit).await;
    platform.rendered(unit, &first.declaration_id).await;
    let review = |id: &str| proto::units::ReviewRequest { caller: reviewer(AGENCY), declaration_id: id.into() };
    platform.units.clone().claim_declaration(review(&first.declaration_id)).await.expect("claimed");
    platform.units.clone().approve_declaration(review(&first.declaration_id)).await.expect("approved");
    let listed =
        proto::personnel::ListPersonsRequest { caller: operator(unit), name: "张伟".into(), ..Default::default() };
    let zhang = platform.personnel.clone().list_persons(listed).await.expect("listed").into_inner().persons[0]
        .person_id
        .clone();
    let transfer = proto::personnel::SaveRosterChangeRequest {
        caller: operator(unit),
        action: "remove".into(),
        person_id: zhang,
        leave_date: "2026-11-30".into(),
        leave_reason: "transfer".into(),
        ..Default::default()
    };
    platform.personnel.clone().save_roster_change(transfer).await.expect("减员 saved");
    let newcomer = proto::personnel::PersonInput {
        name: "王芳".into(),
        id_number: "230502199105062341".into(),
        ..crate::helpers::people().remove(0)
    };
    let add = proto::personnel::SaveRosterChangeRequest {
        caller: operator(unit),
        action: "add".into(),
        person: Some(newcomer),
        ..Default::default()
    };
    platform.personnel.clone().save_roster_change(add).await.expect("增员 saved");
    let declare = proto::units::DeclareRequest { caller: operator(unit), kind: "change".into() };
    let change = platform.units.clone().declare(declare).await.expect("declared").into_inner();

    let documents = platform.rendered(unit, &change.declaration_id).await;
    let kinds: Vec<&str> = documents.documents.iter().map(|document| document.kind.as_str()).collect();
    assert_eq!(kinds, ["change_form", "bundle"]);
    let pdf = download_kind(&platform, unit, &documents, "change_form").await;
    std::fs::write(artifacts().join("change-form.pdf"), &pdf).expect("kept");
    let text = text_of(&pdf);
    for expected in [
        "机关事业单位养老保险人员增减变动表",
        "双鸭山市财政局",
        "减员",
        "张伟",
        "230502198001011238",
        "2026-11-30",
        "调出",
        "增员",
        "王芳",
        "230502199105062341",
        "新参保",
        "单位（盖章）",
        "经办机构审核意见",
        &change.declaration_id,
    ] {
        assert!(text.contains(expected), "the change form shows {expected}: {text}");
    }
    assert!(!text.contains("李娜"), "people who did not change are not on the change form");
}
