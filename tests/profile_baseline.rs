//! The counted figures of each kernel family at the report's small shapes
//! (`tests/common/profile_harness.rs`, the emulator's profile counters) against the committed
//! baseline `tests/data/profile_baseline.json`. Fails when a call's modelled DRAM bytes over its
//! floor, its global sectors per request, or its shared-memory bank conflicts per request grow by
//! more than [`MARGIN`], when a call whose baseline has no conflicts gets any, or when the calls
//! differ from the baseline's. Counts, not timings: deterministic on the emulator's fixed schedule
//! (`LORA_KERNELS_EMULATOR_SEED` is cleared here).
//!
//! Re-bless after a deliberate change: `LORA_KERNELS_BLESS=1 cargo test --test profile_baseline`.
//! Skips (prints why) on a real GPU: the counters exist only on the emulator.
mod common;
#[path = "common/profile_harness.rs"]
mod harness;

use serde_json::{json, Value};

/// Growth allowed before the check fails (5%).
const MARGIN: f64 = 0.05;

fn baseline_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/profile_baseline.json")
}

fn figures(c: &harness::Case) -> Value {
    let (spr, ideal) = c.sectors_per_request();
    let (sreq, conf) = c.shared_conflicts();
    let r = |x: f64| (x * 1e4).round() / 1e4;
    json!({
        "name": c.name,
        "kernels": c.kernels(),
        "launches": c.launches.len(),
        "floor_bytes": c.floor_bytes,
        "dram_bytes": c.dram_bytes(),
        "dram_over_floor": r(c.dram_over_floor()),
        "sectors_per_request": r(spr),
        "ideal_sectors_per_request": r(ideal),
        "shared_requests": sreq,
        "conflicts_per_shared_request": r(conf),
        "mma": c.mma(),
        "warp_instructions": c.warp_instructions(),
    })
}

#[test]
fn counted_traffic_and_conflicts_stay_within_the_baseline() {
    std::env::remove_var("LORA_KERNELS_EMULATOR_SEED");
    let Some(gpu) = common::gpu() else {
        return;
    };
    if !common::driver::on_emulator() {
        println!("SKIPPED: the profile counters exist only on the emulator");
        return;
    }
    let t0 = std::time::Instant::now();
    let got: Vec<Value> = harness::standard_cases(&gpu).iter().map(figures).collect();
    println!(
        "{} calls counted in {:.1} s",
        got.len(),
        t0.elapsed().as_secs_f64()
    );
    if std::env::var("LORA_KERNELS_BLESS").is_ok_and(|v| v == "1") {
        let doc = json!({
            "about": "Counted on the PTX emulator (not measured): tests/profile_baseline.rs. \
                      Re-bless with LORA_KERNELS_BLESS=1 cargo test --test profile_baseline.",
            "margin": MARGIN,
            "cases": got,
        });
        let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
        std::fs::write(baseline_path(), text).expect("writing the baseline");
        println!("blessed {}", baseline_path().display());
        return;
    }
    let text = std::fs::read_to_string(baseline_path()).expect("reading the baseline");
    let base: Value = serde_json::from_str(&text).expect("baseline JSON");
    let base = base["cases"].as_array().expect("cases");
    let mut failures = Vec::new();
    let names = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    if names(base) != names(&got) {
        failures.push(format!(
            "the calls differ from the baseline's: {:?} against {:?}",
            names(&got),
            names(base)
        ));
    }
    for g in &got {
        let name = g["name"].as_str().unwrap();
        let Some(b) = base.iter().find(|b| b["name"] == g["name"]) else {
            continue;
        };
        for key in [
            "dram_over_floor",
            "sectors_per_request",
            "conflicts_per_shared_request",
        ] {
            let (gv, bv) = (g[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            if key == "conflicts_per_shared_request" && bv == 0.0 && gv > 0.0 {
                failures.push(format!(
                    "{name}: {gv} conflicts per shared request, the baseline has none"
                ));
            } else if gv > bv * (1.0 + MARGIN) + 1e-9 {
                failures.push(format!(
                    "{name}: {key} {gv} > baseline {bv} + {:.0}%",
                    MARGIN * 100.0
                ));
            } else if gv < bv * (1.0 - MARGIN) {
                println!("{name}: {key} improved, {gv} against {bv}: re-bless to keep it");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "counted figures outside the baseline (re-bless a deliberate change with \
         LORA_KERNELS_BLESS=1 cargo test --test profile_baseline):\n{}",
        failures.join("\n")
    );
}
