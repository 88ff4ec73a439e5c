//! Loading the establishment registry and 校验 of unit names.

use proto::common::Caller;
use proto::identity::{ImportFileRequest, RegistryEntry, UpsertRegistryEntryRequest, VerifyUnitNameRequest};
use rust_xlsxwriter::Workbook;

use crate::helpers::{admin, load_sample_registry, spawn_identity};

#[tokio::test]
async fn a_registry_csv_with_columns_in_any_order_loads_every_good_row() {
    let identity = spawn_identity().await;

    let report = load_sample_registry(&identity).await;

    assert_eq!(report.loaded, 3, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    let posts: Option<i32> =
        sqlx::query_scalar("select administrative_posts from registry_entries where institution_code = '230500001'")
            .fetch_one(&identity.pool)
            .await
            .expect("entry");
    assert_eq!(posts, Some(35));
}

#[tokio::test]
async fn bad_rows_are_reported_by_row_number_and_column_and_good_rows_still_load() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let file = "单位名称,机构编码,统一社会信用代码,单位类型,所属行政区划,所属经办机构\n\
                双鸭山市民政局,230500010,11230500MB00000041,机关,230500,230500\n\
                ,230500011,11230500MB00000041,机关,230500,230500\n\
                双鸭山市水务局,230500012,11230500MB00000042,机关,230500,230500\n\
                双鸭山市林业局,230500013,12230500MB00000051,宗教团体,230500,230500\n\
                双鸭山市审计局,230500014,12230500MB00000051,机关,999,不存在的中心\n";

    let report = identity
        .client
        .clone()
        .import_registry(ImportFileRequest { caller: admin(), file: file.as_bytes().to_vec() })
        .await
        .expect("the import runs")
        .into_inner();

    assert_eq!(report.loaded, 1, "only 双鸭山市民政局 is good: {report:?}");
    let errors: Vec<(u32, &str, &str)> =
        report.errors.iter().map(|error| (error.row, error.column.as_str(), error.code.as_str())).collect();
    assert!(errors.contains(&(3, "单位名称", "required")), "{errors:?}");
    assert!(errors.contains(&(4, "统一社会信用代码", "credit_code_check_character")), "{errors:?}");
    assert!(errors.contains(&(5, "单位类型", "unknown_unit_type")), "{errors:?}");
    assert!(errors.contains(&(6, "所属行政区划", "invalid_region_code")), "{errors:?}");
    assert!(errors.contains(&(6, "所属经办机构", "unknown_agency")), "{errors:?}");
    assert!(report.errors.iter().all(|error| !error.message.is_empty()), "every error says what is wrong");
}

#[tokio::test]
async fn an_xlsx_registry_loads_like_a_csv_one() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let mut workbook = Workbook::new();
    let sheet = workbook.add_worksheet();
    let rows = [
        ["单位名称", "机构编码", "统一社会信用代码", "单位类型", "所属行政区划", "所属经办机构"],
        ["双鸭山市民政局", "230500010", "11230500MB00000041", "机关", "230500", "230500"],
        ["双鸭山市林业局", "230500013", "bad", "机关", "230500", "230500"],
    ];
    for (row, values) in rows.iter().enumerate() {
        for (column, value) in values.iter().enumerate() {
            sheet.write_string(row as u32, column as u16, *value).expect("cell");
        }
    }
    // A code typed as a number must still read as the code.
    sheet.write_number(1, 4, 230500.0).expect("cell");
    let file = workbook.save_to_buffer().expect("xlsx");

    let report = identity
        .client
        .clone()
        .import_registry(ImportFileRequest { caller: admin(), file })
        .await
        .expect("the import runs")
        .into_inner();

    assert_eq!(report.loaded, 1, "{report:?}");
    assert_eq!(report.errors.len(), 1);
    assert_eq!((report.errors[0].row, report.errors[0].column.as_str()), (3, "统一社会信用代码"));
}

#[tokio::test]
async fn a_file_without_the_required_columns_is_refused_naming_them() {
    let identity = spawn_identity().await;

    let status = identity
        .client
        .clone()
        .import_registry(ImportFileRequest {
            caller: admin(), file: "单位名称,备注\n某单位,\n".as_bytes().to_vec()
        })
        .await
        .expect_err("refused");

    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("机构编码") && status.message().contains("统一社会信用代码"),
        "{}",
        status.message()
    );
    assert_eq!(kit::status::reason(&status).as_deref(), Some("missing_columns"));
}

#[tokio::test]
async fn only_the_province_admin_loads_or_edits_the_registry() {
    let identity = spawn_identity().await;
    let operator = Some(Caller { actor: "someone".into(), role: "unit_operator".into(), ..Caller::default() });

    let import = identity
        .client
        .clone()
        .import_registry(ImportFileRequest { caller: operator.clone(), file: b"x".to_vec() })
        .await
        .expect_err("refused");
    let upsert = identity
        .client
        .clone()
        .upsert_registry_entry(UpsertRegistryEntryRequest { caller: None, entry: Some(RegistryEntry::default()) })
        .await
        .expect_err("refused");

    assert_eq!(import.code(), tonic::Code::PermissionDenied);
    assert_eq!(upsert.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn one_entry_is_updated_over_grpc_and_a_name_taken_by_another_unit_is_refused() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let mut client = identity.client.clone();
    let entry = RegistryEntry {
        institution_code: "230500001".into(),
        unit_name: "双鸭山市财政局".into(),
        credit_code: "11230500MB0000001P".into(),
        unit_type: "机关".into(),
        region_code: "230500".into(),
        agency_code: "230500".into(),
        administrative_posts: Some(36),
        ..RegistryEntry::default()
    };

    let updated = client
        .upsert_registry_entry(UpsertRegistryEntryRequest { caller: admin(), entry: Some(entry.clone()) })
        .await
        .expect("updated")
        .into_inner();
    let clash = client
        .upsert_registry_entry(UpsertRegistryEntryRequest {
            caller: admin(),
            entry: Some(RegistryEntry {
                institution_code: "230500099".into(),
                credit_code: "11230500MB00000041".into(),
                ..entry
            }),
        })
        .await
        .expect_err("the name belongs to 230500001");

    assert_eq!(updated.administrative_posts, Some(36));
    assert_eq!(kit::status::reason(&clash).as_deref(), Some("duplicate_unit_name"));
}

#[tokio::test]
async fn a_name_matches_after_normalisation_and_a_miss_offers_the_closest_names() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let mut client = identity.client.clone();

    let exact = client
        .verify_unit_name(VerifyUnitNameRequest {
            unit_type: "机关".into(), unit_name: " 双鸭山市　财政局 ".into()
        })
        .await
        .expect("answers")
        .into_inner();
    let detailed = client
        .verify_unit_name(VerifyUnitNameRequest {
            unit_type: "事业单位".into(), unit_name: "尖山区第一中学".into()
        })
        .await
        .expect("answers")
        .into_inner();
    let wrong_type = client
        .verify_unit_name(VerifyUnitNameRequest {
            unit_type: "事业单位".into(), unit_name: "双鸭山市财政局".into()
        })
        .await
        .expect("answers")
        .into_inner();
    let miss = client
        .verify_unit_name(VerifyUnitNameRequest { unit_type: "机关".into(), unit_name: "双鸭山财政局".into() })
        .await
        .expect("answers")
        .into_inner();

    assert!(exact.matched);
    assert_eq!(exact.entry.expect("entry").institution_code, "230500001");
    assert!(detailed.matched, "事业单位 finds a 公益一类事业单位");
    assert!(!wrong_type.matched, "a 机关 is not found as 事业单位");
    assert!(!miss.matched);
    assert_eq!(miss.candidates.first().map(String::as_str), Some("双鸭山市财政局"), "{:?}", miss.candidates);
}
