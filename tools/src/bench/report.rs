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
struct Line {
    what: String,
    hs: Option<f64>,
    redis: Option<f64>,
    unit: &'static str,
    goal: Option<(f64, bool)>,
    /// Shown in the hs column when there is no number (why it is missing).
    note: Option<String>,
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
    for &s in &sizes {
        let h = find(&hs, "replicate", Some(s));
        let r = find(&redis, "replicate", Some(s));
        let goal_rec = (s == 64).then_some((5e6, true));
        let goal_bytes = (s == 1024).then_some((1e9, true));
        lines.push(Line {
            what: format!("replication {}, published → applied", size_label(s)),
            hs: h.and_then(|r| f(r, "records_per_s")),
            redis: r.and_then(|r| f(r, "records_per_s")),
            unit: "rec/s",
            goal: goal_rec,
            note: None,
        });
        lines.push(Line {
            what: format!("replication {}, value bytes", size_label(s)),
            hs: h.and_then(|r| f(r, "bytes_per_s")),
            redis: r.and_then(|r| f(r, "bytes_per_s")),
            unit: "MB/s",
            goal: goal_bytes,
            note: None,
        });
        if let Some(r) = r.and_then(|r| f(r, "master_records_per_s")) {
            lines.push(Line {
                what: format!(
                    "  publisher side only, {} (hs: publish returns; Redis: benchmark acks)",
                    size_label(s)
                ),
                hs: h.and_then(|r| f(r, "publish_records_per_s")),
                redis: Some(r),
                unit: "rec/s",
                goal: None,
                note: None,
            });
        }
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
            ("p99_us", "p99", Some((250.0, false))),
            ("p999_us", "p99.9", None),
        ] {
            lines.push(Line {
                what: format!(
                    "latency publish → applied {label}, {} at {} rec/s",
                    size_label(s),
                    fmt_num(rate)
                ),
                hs: f(h, k),
                redis: r.and_then(|r| f(r, k)),
                unit: "µs",
                goal,
                note: None,
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
                redis: r.and_then(|r| f(r, "bytes_per_s")),
                unit: "MB/s",
                goal: Some((1e9, true)),
                note: None,
            });
            lines.push(Line {
                what: format!("catch-up of {}: time to caught up", bytes_label(vol)),
                hs: f(h, "secs"),
                redis: r.and_then(|r| f(r, "secs")),
                unit: "s",
                goal: None,
                note: None,
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
            });
        }
    }
    if let Some(h) = find(&hs, "recovery", None) {
        let vol = f(h, "log_bytes").unwrap_or(0.0);
        lines.push(Line {
            what: format!("recovery: reopen a {} log (scan, CRC)", bytes_label(vol)),
            hs: f(h, "open_ms"),
            redis: None,
            unit: "ms",
            goal: Some((1000.0, false)),
            note: None,
        });
        lines.push(Line {
            what: format!("restart: open + replay {} through Apply", bytes_label(vol)),
            hs: f(h, "node_start_ms"),
            redis: None,
            unit: "ms",
            goal: None,
            note: h
                .get("node_start_error")
                .and_then(Value::as_str)
                .map(|e| format!("fails: {e}")),
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
                let ok = if higher { h >= g } else { h <= g };
                (
                    format!(
                        "{} {}",
                        if higher { "≥" } else { "≤" },
                        cell(Some(g), l.unit)
                    ),
                    if ok { "yes" } else { "no" },
                )
            }
            _ => ("".into(), ""),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            l.what,
            if l.hs.is_none() {
                l.note.clone().unwrap_or_else(|| cell(None, l.unit))
            } else {
                cell(l.hs, l.unit)
            },
            cell(l.redis, l.unit),
            ratio.map_or("—".into(), |x| format!("{:.2}×", x)),
            goal,
            met
        ));
        table_json.push(json!({"what": l.what, "unit": l.unit, "hs": l.hs, "redis": l.redis, "ratio": ratio, "goal": l.goal.map(|g| g.0), "met": if met.is_empty() { Value::Null } else { json!(met == "yes") }}));
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
