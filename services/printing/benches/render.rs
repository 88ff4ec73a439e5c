//! How long the roster of a 1,000-person unit takes to render, and how large it is: `make bench` runs it in release
//! mode. Prints one line per size with the median of the runs.

use std::time::{Duration, Instant};

use printing::render::{Renderer, Snapshot};
use proto::personnel::Person;
use proto::units::UnitRecord;

/// A valid 18-digit ID number with sequence `n`.
fn id_number(n: usize) -> String {
    validators::id_number::with_check_char(&format!("2305021980{:02}{:02}{:03}", 1 + n % 12, 1 + n % 28, n % 1000))
}

fn snapshot(people: usize) -> Snapshot {
    let persons = (0..people)
        .map(|n| Person {
            kind: "staff".into(),
            name: format!("测试人员{}", ["甲", "乙", "丙", "丁"][n % 4]),
            id_number: id_number(n),
            sex_label: if n % 2 == 0 { "男".into() } else { "女".into() },
            birth_date: "1980-01-01".into(),
            funding_form: "1".into(),
            work_start: "2002-07-01".into(),
            joined_unit: "2010-03-01".into(),
            personnel_status: "1".into(),
            ..Person::default()
        })
        .collect();
    Snapshot {
        declaration_id: "019ae5c3-1111-7777-8888-999999999999".into(),
        declared_on: "2026-12-04".into(),
        unit: UnitRecord {
            unit_name: "双鸭山市财政局".into(),
            credit_code: "11230500MB0000010M".into(),
            ..UnitRecord::default()
        },
        persons,
        verify_url: format!("http://127.0.0.1:8080/verify/019ae5c3-1111-7777-8888-999999999999/{}", "ab".repeat(32)),
        ..Snapshot::default()
    }
}

fn main() {
    let font_dir =
        std::env::var("PENSION__PRINTING__FONT_DIR").unwrap_or_else(|_| "/usr/share/fonts/opentype/noto".into());
    let started = Instant::now();
    let renderer = Renderer::new(
        std::path::Path::new(&font_dir),
        &["NotoSansCJK-Regular.ttc".into(), "NotoSansCJK-Bold.ttc".into()],
        "Noto Sans CJK SC",
    )
    .expect("fonts");
    println!("render: fonts loaded in {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
    for people in [25, 1_000] {
        let snapshot = snapshot(people);
        let mut times: Vec<Duration> = Vec::new();
        let mut last = None;
        for _ in 0..7 {
            let started = Instant::now();
            let rendered = renderer.render(&snapshot, &["staff_roster"]).expect("renders");
            times.push(started.elapsed());
            last = Some(rendered);
        }
        times.sort();
        let rendered = last.expect("rendered");
        println!(
            "render: staff roster of {people} people: median {:.0} ms (min {:.0}, max {:.0}), {} pages, {} KiB",
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[0].as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0,
            rendered.pages,
            rendered.pdf.len() / 1024
        );
    }
}
