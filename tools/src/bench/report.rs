//! `hs-bench report`: merges hs-bench's JSON lines and the Redis numbers that
//! benches/compare.sh measured in the same run, prints the side-by-side table
//! (markdown) with the ratio hs / Redis and the goals, and writes the JSON and
//! the SVG plots.

use std::path::PathBuf;

use clap::Args;
use plotters::prelude::*;
use serde_json::{json, Value};

use super::{fmt_num, Row};

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// hs-bench results, one JSON object per line.
    #[arg(long)]
    pub hs: PathBuf,
    /// Redis results, one JSON object per line (optional).
    #[arg(long)]
    pub redis: Option<PathBuf>,
    /// Where compare.json, compare.md, throughput.svg and latency.svg go.
    #[arg(long, default_value = "benches/results")]
    pub out: PathBuf,
    /// A line about the machine and the run, printed above the table.
    #[arg(long, default_value = "")]
    pub note: String,
}

fn load(path: &PathBuf) -> Result<Vec<Row>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for l in text.lines().map(str::trim).filter(|l| l.starts_with('{')) {
        match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(m)) => out.push(m),
            _ => return Err(format!("{}: not a JSON object: {l}", path.display())),
        }
    }
    Ok(out)
}

fn f(r: &Row, k: &str) -> Option<f64> {
    r.get(k).and_then(Value::as_f64)
}

fn find<'a>(rows: &'a [Row], scenario: &str, size: Option<u64>) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.get("scenario").and_then(Value::as_str) == Some(scenario)
            && size.is_none_or(|s| r.get("record_size").and_then(Value::as_u64) == Some(s))
    })
}

fn size_label(s: u64) -> String {
    if s >= 1024 && (s & 1023) == 0 {
        format!("{} KiB", s / 1024)
    } else {
        format!("{s} B")
    }
}

fn bytes_label(b: f64) -> String {
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!(
            "{} GiB",
            fmt_num(((b / 1073741824.0) * 100.0).round() / 100.0)
        )
    } else {
        format!("{} MiB", (b / 1048576.0).round())
    }
}

/// One line of the table. `higher`: whether a higher value is better (for the goal).
#[derive(Default)]
struct Line {
    what: String,
    hs: Option<f64>,
    redis: Option<f64>,
    unit: &'static str,
    goal: Option<(f64, bool)>,
    /// Shown in the hs column when there is no number (why it is missing).
    note: Option<String>,
    /// The worst run's value (the minimum, or the maximum where lower is
    /// better), shown beside the median.
    worst: Option<f64>,
    /// Also a goal: hs / Redis at least this.
    ratio_goal: Option<f64>,
    /// The goal must hold in every run (judged on `worst`), not only the median.
    every_run: bool,
}

/// The worst of the runs behind a median row: its `min` (`higher` is better)
/// or its `max`.
fn worst(r: &Row, k: &str, higher: bool) -> Option<f64> {
    r.get(if higher { "min" } else { "max" })
        .and_then(|m| m.get(k))
        .and_then(Value::as_f64)
}

/// The replicate row of `size` whose slave applied with `apply` (rows from
/// before `apply` was recorded count as `count`).
fn find_apply<'a>(rows: &'a [Row], size: u64, apply: &str) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.get("scenario").and_then(Value::as_str) == Some("replicate")
            && r.get("record_size").and_then(Value::as_u64) == Some(size)
            && r.get("apply").and_then(Value::as_str).unwrap_or("count") == apply
    })
}

fn cell(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "—".into(),
        Some(x) => match unit {
            "MB/s" => format!("{} MB/s", fmt_num((x / 1e6 * 10.0).round() / 10.0)),
            "rec/s" => format!("{} rec/s", fmt_num(x)),
            u => format!("{} {u}", fmt_num(x)),
        },
    }
}

pub fn run(a: &ReportArgs) -> Result<(), String> {
    let hs = load(&a.hs)?;
    let redis = match &a.redis {
        Some(p) => load(p)?,
        None => Vec::new(),
    };
    let mut lines: Vec<Line> = Vec::new();
    let mut sizes: Vec<u64> = hs
        .iter()
        .filter(|r| r.get("scenario").and_then(Value::as_str) == Some("replicate"))
        .filter_map(|r| r.get("record_size").and_then(Value::as_u64))
        .collect();
    sizes.sort();
    sizes.dedup();
    if let Some(h) = find(&hs, "loopback", None) {
        lines.push(Line {
            what: format!(
                "one loopback TCP stream, {} writes: the ceiling of any stream here",
                size_label(f(h, "write_bytes").unwrap_or(0.0) as u64)
            ),
            hs: f(h, "bytes_per_s"),
            worst: worst(h, "bytes_per_s", true),
            unit: "MB/s",
            ..Default::default()
        });
    }
    // The headline is `--apply kv` (the slave keeps a map, as a Redis replica
    // does); `count` (the slave only counts) is the second row.
    for &s in &sizes {
        let r = find(&redis, "replicate", Some(s));
        for apply in ["kv", "count"] {
            let Some(h) = find_apply(&hs, s, apply) else {
                continue;
            };
            let (goal_rec, goal_bytes, ratio) = match (apply, s) {
                ("kv", 64) => (Some((8e6, true)), None, Some(6.0)),
                ("kv", 1024) => (None, Some((1.5e9, true)), Some(3.0)),
                _ => (None, None, None),
            };
            let how = if apply == "kv" {
                "into a map (`--apply kv`, as a Redis replica)"
            } else {
                "counted only (`--apply count`)"
            };
            lines.push(Line {
                what: format!("replication {}, published → applied {how}", size_label(s)),
                hs: f(h, "records_per_s"),
                worst: worst(h, "records_per_s", true),
                redis: r.and_then(|r| f(r, "records_per_s")),
                unit: "rec/s",
                goal: goal_rec,
                ratio_goal: goal_rec.and(ratio),
                ..Default::default()
            });
            lines.push(Line {
                what: format!("replication {}, value bytes, {how}", size_label(s)),
                hs: f(h, "bytes_per_s"),
                worst: worst(h, "bytes_per_s", true),
                redis: r.and_then(|r| f(r, "bytes_per_s")),
                unit: "MB/s",
                goal: goal_bytes,
                ratio_goal: goal_bytes.and(ratio),
                ..Default::default()
            });
            if apply != "kv" {
                continue;
            }
            if let Some(rr) = r.and_then(|r| f(r, "master_records_per_s")) {
                lines.push(Line {
                    what: format!(
                        "  publisher side only, {} (hs: publish returns; Redis: benchmark acks)",
                        size_label(s)
                    ),
                    hs: f(h, "publish_records_per_s"),
                    worst: worst(h, "publish_records_per_s", true),
                    redis: Some(rr),
                    unit: "rec/s",
                    ..Default::default()
                });
            }
        }
    }
    // Extra rows: the same replication on logs already at their retention
    // (`replicate --warm-bytes`), where rolls recycle retired segments; beside
    // the Redis number of the same size, as the fresh-log rows.
    for h in hs
        .iter()
        .filter(|r| r.get("scenario").and_then(Value::as_str) == Some("replicate_at_retention"))
    {
        let s = h.get("record_size").and_then(Value::as_u64).unwrap_or(0);
        let apply = h.get("apply").and_then(Value::as_str).unwrap_or("count");
        let r = find(&redis, "replicate", Some(s));
        let (unit, key) = if s >= 1024 {
            ("MB/s", "bytes_per_s")
        } else {
            ("rec/s", "records_per_s")
        };
        lines.push(Line {
            what: format!(
                "replication {}, `--apply {apply}`, both logs at their retention ({} kept; {} + {} segments recycled by master + slave)",
                size_label(s),
                bytes_label(f(h, "retention_bytes").unwrap_or(0.0)),
                fmt_num(f(h, "segments_recycled").unwrap_or(0.0)),
                fmt_num(f(h, "slave_segments_recycled").unwrap_or(0.0)),
            ),
            hs: f(h, key),
            worst: worst(h, key, true),
            redis: r.and_then(|r| f(r, key)),
            unit,
            ..Default::default()
        });
    }
    if let Some(h) = find(&hs, "replicate", Some(64)).or_else(|| find(&hs, "replicate", None)) {
        lines.push(Line {
            what: format!(
                "publish cost p50 ({} values, per call)",
                size_label(h.get("record_size").and_then(Value::as_u64).unwrap_or(0))
            ),
            hs: f(h, "publish_p50_ns"),
            redis: None,
            unit: "ns",
            goal: Some((100.0, false)),
            note: None,
            ..Default::default()
        });
    }
    for h in hs
        .iter()
        .filter(|r| r.get("scenario").and_then(Value::as_str) == Some("latency"))
    {
        let rate = f(h, "rate").unwrap_or(0.0);
        let s = h.get("record_size").and_then(Value::as_u64).unwrap_or(0);
        let r = redis
            .iter()
            .find(|r| r.get("scenario").and_then(Value::as_str) == Some("latency"));
        for (k, label, goal) in [
            ("p50_us", "p50", None),
            ("p99_us", "p99", Some((150.0, false))),
            ("p999_us", "p99.9", Some((1000.0, false))),
        ] {
            lines.push(Line {
                what: format!(
                    "latency publish → applied {label}, {} at {} rec/s",
                    size_label(s),
                    fmt_num(rate)
                ),
                hs: f(h, k),
                worst: worst(h, k, false),
                redis: r.and_then(|r| f(r, k)),
                unit: "µs",
                goal,
                note: None,
                ..Default::default()
            });
        }
    }
    for h in hs
        .iter()
        .filter(|r| r.get("scenario").and_then(Value::as_str) == Some("catchup"))
    {
        let lim = f(h, "rate_limit").unwrap_or(0.0);
        let vol = f(h, "volume_bytes").unwrap_or(0.0);
        let r = redis
            .iter()
            .find(|r| r.get("scenario").and_then(Value::as_str) == Some("catchup") && lim == 0.0);
        if lim == 0.0 {
            lines.push(Line {
                what: format!("catch-up of {} (values), unthrottled", bytes_label(vol)),
                hs: f(h, "bytes_per_s"),
                worst: worst(h, "bytes_per_s", true),
                redis: r.and_then(|r| f(r, "bytes_per_s")),
                unit: "MB/s",
                goal: Some((1.5e9, true)),
                every_run: true,
                note: None,
                ..Default::default()
            });
            lines.push(Line {
                what: format!("catch-up of {}: time to caught up", bytes_label(vol)),
                hs: f(h, "secs"),
                worst: worst(h, "secs", false),
                redis: r.and_then(|r| f(r, "secs")),
                unit: "s",
                goal: None,
                note: None,
                ..Default::default()
            });
        } else {
            lines.push(Line {
                what: format!(
                    "catch-up limited to {} MB/s: error of the limit",
                    fmt_num(lim / 1e6)
                ),
                hs: f(h, "limit_error_pct"),
                redis: None,
                unit: "%",
                goal: None,
                note: None,
                ..Default::default()
            });
        }
    }
    if let Some(h) = find(&hs, "recovery", None) {
        let vol = f(h, "log_bytes").unwrap_or(0.0);
        lines.push(Line {
            what: format!("recovery: reopen a {} log (scan, CRC)", bytes_label(vol)),
            hs: f(h, "open_ms"),
            worst: worst(h, "open_ms", false),
            redis: None,
            unit: "ms",
            goal: Some((1000.0, false)),
            note: None,
            ..Default::default()
        });
        lines.push(Line {
            what: format!("restart: open + replay {} through Apply", bytes_label(vol)),
            hs: f(h, "node_start_ms"),
            worst: worst(h, "node_start_ms", false),
            redis: None,
            unit: "ms",
            goal: None,
            note: h
                .get("node_start_error")
                .and_then(Value::as_str)
                .map(|e| format!("fails: {e}")),
            ..Default::default()
        });
    }

    let mut md = String::new();
    if !a.note.is_empty() {
        md.push_str(&format!("{}\n\n", a.note));
    }
    md.push_str(
        "| measurement | hs | Redis | hs / Redis | goal | met |\n|---|---:|---:|---:|---:|:---:|\n",
    );
    let mut table_json = Vec::new();
    for l in &lines {
        let ratio = match (l.hs, l.redis) {
            // For times and latencies lower is better: the ratio is still hs / Redis as measured.
            (Some(h), Some(r)) if r > 0.0 => Some(h / r),
            _ => None,
        };
        let (goal, met) = match (l.goal, l.hs) {
            (Some((g, higher)), Some(h)) => {
                let judged = if l.every_run { l.worst.unwrap_or(h) } else { h };
                let mut ok = if higher { judged >= g } else { judged <= g };
                let mut text = format!(
                    "{} {}{}",
                    if higher { "≥" } else { "≤" },
                    cell(Some(g), l.unit),
                    if l.every_run { " in every run" } else { "" }
                );
                if let Some(rg) = l.ratio_goal {
                    ok &= ratio.is_some_and(|x| x >= rg);
                    text.push_str(&format!(", ≥ {rg}× Redis"));
                }
                (text, if ok { "yes" } else { "no" })
            }
            _ => ("".into(), ""),
        };
        let hs_cell = match (l.hs, l.worst) {
            (None, _) => l.note.clone().unwrap_or_else(|| cell(None, l.unit)),
            (Some(h), Some(w)) if w != h => {
                let higher = !matches!(l.unit, "µs" | "s" | "ms" | "ns");
                format!(
                    "{} ({} {})",
                    cell(Some(h), l.unit),
                    if higher { "min" } else { "max" },
                    cell(Some(w), l.unit)
                )
            }
            (Some(h), _) => cell(Some(h), l.unit),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            l.what,
            hs_cell,
            cell(l.redis, l.unit),
            ratio.map_or("—".into(), |x| format!("{:.2}×", x)),
            goal,
            met
        ));
        table_json.push(json!({"what": l.what, "unit": l.unit, "hs": l.hs, "hs_worst": l.worst, "redis": l.redis, "ratio": ratio, "goal": l.goal.map(|g| g.0), "met": if met.is_empty() { Value::Null } else { json!(met == "yes") }}));
    }
    print!("{md}");
    std::fs::create_dir_all(&a.out).map_err(|e| format!("create {}: {e}", a.out.display()))?;
    let all = json!({ "note": a.note, "hs": hs, "redis": redis, "table": table_json });
    std::fs::write(
        a.out.join("compare.json"),
        serde_json::to_string_pretty(&all).unwrap(),
    )
    .map_err(|e| format!("write compare.json: {e}"))?;
    std::fs::write(a.out.join("compare.md"), &md).map_err(|e| format!("write compare.md: {e}"))?;
    plot_throughput(&hs, &redis, &a.out.join("throughput.svg"))
        .map_err(|e| format!("throughput plot: {e}"))?;
    plot_latency(&hs, &a.out.join("latency.svg")).map_err(|e| format!("latency plot: {e}"))?;
    eprintln!(
        "wrote {}/compare.json, compare.md, throughput.svg, latency.svg",
        a.out.display()
    );
    Ok(())
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn series(rows: &[Row], key: &str) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.get("scenario").and_then(Value::as_str) == Some("replicate"))
        // hs's headline rows (a map on the slave); Redis rows have no `apply`.
        .filter(|r| {
            r.get("apply")
                .and_then(Value::as_str)
                .is_none_or(|a| a == "kv")
        })
        .filter_map(|r| Some((f(r, "record_size")?, f(r, key)?)))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// Two panels: records/s and MB/s by value size, hs and Redis; sizes are
/// categories on x, y is logarithmic.
fn plot_throughput(hs: &[Row], redis: &[Row], path: &std::path::Path) -> PlotResult {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let mut sizes: Vec<f64> = series(hs, "records_per_s")
        .iter()
        .chain(series(redis, "records_per_s").iter())
        .map(|p| p.0)
        .collect();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();
    if sizes.is_empty() {
        root.present()?;
        return Ok(());
    }
    let idx = |x: f64| sizes.iter().position(|&s| s == x).unwrap_or(0) as f64;
    for (i, (key, title, scale)) in [
        ("records_per_s", "records/s published → applied", 1.0),
        ("bytes_per_s", "MB/s of values published → applied", 1e-6),
    ]
    .into_iter()
    .enumerate()
    {
        let h: Vec<(f64, f64)> = series(hs, key)
            .into_iter()
            .map(|(x, y)| (idx(x), y * scale))
            .collect();
        let r: Vec<(f64, f64)> = series(redis, key)
            .into_iter()
            .map(|(x, y)| (idx(x), y * scale))
            .collect();
        let all: Vec<&(f64, f64)> = h.iter().chain(r.iter()).collect();
        if all.is_empty() {
            continue;
        }
        let ymin = all.iter().map(|p| p.1).fold(f64::MAX, f64::min).max(1e-3) / 3.0;
        let ymax = all.iter().map(|p| p.1).fold(0.0, f64::max) * 3.0;
        let n = sizes.len();
        let mut chart = ChartBuilder::on(&panels[i])
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (ymin..ymax).log_scale())?;
        let labels = sizes.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("value bytes")
            .x_labels(n * 2 + 1)
            .x_label_formatter(&move |x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 && (i as usize) < labels.len() {
                    format!("{}", labels[i as usize])
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| fmt_num(*y))
            .draw()?;
        for (pts, name, color) in [(&h, "hs", BLUE), (&r, "Redis (replica)", RED)] {
            if pts.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Latency by percentile (x: number of nines), one line per latency run.
fn plot_latency(hs: &[Row], path: &std::path::Path) -> PlotResult {
    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let runs: Vec<(String, Vec<(f64, f64)>)> = hs
        .iter()
        .filter(|r| r.get("scenario").and_then(Value::as_str) == Some("latency"))
        .map(|r| {
            let pts: Vec<(f64, f64)> = r
                .get("distribution")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|p| {
                            let q = p.get(0)?.as_f64()?;
                            let us = p.get(1)?.as_f64()?;
                            // x = nines: 90% -> 1, 99% -> 2, ...; the max sits just past the last quantile.
                            let x = if q >= 100.0 {
                                f64::NAN
                            } else {
                                -(1.0 - q / 100.0).log10()
                            };
                            Some((x, us.max(0.1)))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let max_x = pts
                .iter()
                .map(|p| p.0)
                .filter(|x| x.is_finite())
                .fold(0.0, f64::max);
            let pts = pts
                .into_iter()
                .map(|(x, y)| (if x.is_finite() { x } else { max_x + 0.3 }, y))
                .collect();
            (
                format!(
                    "hs {} B at {} rec/s",
                    r.get("record_size").and_then(Value::as_u64).unwrap_or(0),
                    fmt_num(f(r, "rate").unwrap_or(0.0))
                ),
                pts,
            )
        })
        .collect();
    let all: Vec<(f64, f64)> = runs.iter().flat_map(|r| r.1.iter().copied()).collect();
    if all.is_empty() {
        root.present()?;
        return Ok(());
    }
    let xmax = all.iter().map(|p| p.0).fold(0.0, f64::max).max(3.0);
    let ymin = all.iter().map(|p| p.1).fold(f64::MAX, f64::min) / 1.5;
    let ymax = all.iter().map(|p| p.1).fold(0.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "publish → applied on the slave (two processes, loopback)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("µs")
        .x_labels(((xmax.ceil() as usize) + 1).min(8))
        .x_label_formatter(&|x| {
            let q = 100.0 * (1.0 - 10f64.powf(-x));
            if q < 99.0 {
                format!("{:.0}%", q)
            } else {
                format!("{}%", fmt_num((q * 1000.0).round() / 1000.0))
            }
        })
        .y_label_formatter(&|y| fmt_num(*y))
        .draw()?;
    let colors = [BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (name, pts)) in runs.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
