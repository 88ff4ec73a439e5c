//! How long the enrollment dashboards take at the province's size: 20,000 registry units and 1.5 million people
//! saved over six peak weeks, in units' projection on a database of the benchmark's own. Measures the figures' read
//! (`GetEnrollmentProgress`'s work) for the province, one agency and one city, and the province page's HTML built
//! from them; prints the median and the slowest of the runs. `make bench` runs it in release mode.

use std::time::{Duration, Instant};

use kit::db::Scope;
use proto::common::Caller;
use proto::units::GetEnrollmentProgressRequest;
use sqlx::PgPool;

const UNITS: i64 = 20_000;
const PEOPLE: i64 = 1_500_000;
const AGENCIES: i64 = 150;
const RUNS: usize = 15;

/// The projection of a province in its sixth peak week, written straight into the tables (the figures' read is
/// what is measured, not how they got there). Agencies are numbered 2301xx…, one region each; units spread over
/// them and over every state; people over 42 days of 10 working hours.
async fn fill(pool: &PgPool) -> anyhow::Result<()> {
    let mut transaction = kit::db::begin_scoped(pool, &Scope::All).await?;
    sqlx::query(
        "insert into progress_units (institution_code, in_registry, region_code, agency_code, key_applied_at, \
         key_made_at, activated_at, record_filled_at, declaration_state) \
         select lpad(n::text, 9, '0'), true, region, region, \
             case when n % 10 >= 1 then t end, case when n % 10 >= 2 then t end, case when n % 10 >= 3 then t end, \
             case when n % 10 >= 4 then t end, \
             (array['', '', '', '', '', 'declared', 'claimed', 'rejected', 'approved', 'approved'])[n % 10 + 1] \
         from (select n, (2301 + n % 13)::text || lpad((n % $2 / 13 + 1)::text, 2, '0') as region, \
             now() - interval '40 days' + (n % 1000) * interval '1 hour' as t \
             from generate_series(1, $1) n) u",
    )
    .bind(UNITS)
    .bind(AGENCIES)
    .execute(&mut *transaction)
    .await?;
    // 42 days × 10 hours × 150 agencies rows; their counts add up to PEOPLE.
    let rows = 42 * 10 * AGENCIES;
    let per_row = PEOPLE / rows;
    sqlx::query(
        "insert into progress_people (agency_code, region_code, hour, staff, retiree_pre_reform, \
         retiree_post_reform, deleted) \
         select a.code, a.code, date_trunc('day', now()) - d * interval '1 day' + (8 + h) * interval '1 hour', \
             $1 * 7 / 10, $1 * 2 / 10, $1 - $1 * 7 / 10 - $1 * 2 / 10, $1 / 50 \
         from (select distinct agency_code as code from progress_units) a, generate_series(0, 41) d, \
             generate_series(0, 9) h",
    )
    .bind(per_row)
    .execute(&mut *transaction)
    .await?;
    sqlx::query(
        "insert into progress_declarations (declaration_id, institution_code, agency_code, kind, state, \
         declared_at, decided_at, reason) \
         select institution_code || '-' || k, institution_code, agency_code, 'initial', \
             case when k = 1 and declaration_state <> 'rejected' then 'rejected' else declaration_state end, \
             now() - interval '30 days' + k * interval '1 day', null, \
             case when k = 1 or declaration_state = 'rejected' \
                 then (array['联系电话有误', '人员信息不完整', '编制数与编制通不符', '银行账号有误', '法定代表人信息有误'])[abs(hashtext(institution_code)) % 5 + 1] \
                 else '' end \
         from progress_units, generate_series(1, 2) k \
         where declaration_state <> '' and (k = 2 or abs(hashtext(institution_code)) % 4 = 0)",
    )
    .execute(&mut *transaction)
    .await?;
    sqlx::query(
        "insert into progress_load (minute, saved, imported) \
         select date_trunc('minute', now()) - m * interval '1 minute', 40 + m % 20, 300 + m % 50 \
         from generate_series(0, 42 * 1440) m",
    )
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    sqlx::query("analyze").execute(pool).await?;
    Ok(())
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let median = times[times.len() / 2];
    let slowest = times[times.len() - 1];
    println!("dashboard {what}: median {} ms, slowest {} ms", median.as_millis(), slowest.as_millis());
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let database = kit::testing::TestDatabase::create().await;
    let owner = kit::db::connect(&database.config(), "bench").await?;
    kit::db::migrate(&owner, &units::MIGRATOR).await?;
    let pool = kit::db::connect_application(&database.config(), "bench").await?;
    let started = Instant::now();
    fill(&owner).await?;
    let people: i64 =
        sqlx::query_scalar("select sum(staff + retiree_pre_reform + retiree_post_reform)::bigint from progress_people")
            .fetch_one(&owner)
            .await?;
    println!(
        "dashboard: {UNITS} units, {people} people in the projection, written in {} ms",
        started.elapsed().as_millis()
    );
    let agencies: Vec<(String, String)> =
        sqlx::query_scalar::<_, String>("select distinct agency_code from progress_units order by 1")
            .fetch_all(&owner)
            .await?
            .into_iter()
            .map(|code| (code.clone(), format!("{code} 社会保险事业中心")))
            .collect();
    let admin = Caller { actor: "bench".into(), role: "province_admin".into(), ..Default::default() };
    let reviewer = Caller {
        actor: "bench".into(),
        role: "agency_reviewer".into(),
        agency_code: agencies[0].0.clone(),
        ..Default::default()
    };
    let cases = [
        ("province", GetEnrollmentProgressRequest { caller: Some(admin.clone()), ..Default::default() }),
        ("one agency", GetEnrollmentProgressRequest { caller: Some(reviewer), ..Default::default() }),
        (
            "one city",
            GetEnrollmentProgressRequest { caller: Some(admin), region_code: "2305".into(), ..Default::default() },
        ),
    ];
    let pages = gateway::Pages::new();
    for (what, request) in cases {
        let mut reads = Vec::new();
        let mut pages_built = Vec::new();
        let mut size = 0;
        for _ in 0..RUNS {
            let started = Instant::now();
            let progress =
                units::progress::read(&pool, request.clone()).await.map_err(|status| anyhow::anyhow!("{status:?}"))?;
            reads.push(started.elapsed());
            let started = Instant::now();
            let html = gateway::dashboard_page_html(&pages, progress, agencies.clone());
            pages_built.push(started.elapsed());
            size = html.len();
        }
        report(&format!("{what}: figures read"), reads.clone());
        report(&format!("{what}: page built ({} KiB)", size / 1024), pages_built.clone());
        let whole: Vec<Duration> = reads.iter().zip(&pages_built).map(|(read, built)| *read + *built).collect();
        report(&format!("{what}: whole page"), whole);
    }
    pool.close().await;
    owner.close().await;
    drop(database);
    Ok(())
}
