//! Results as a reader sees them: a Markdown table (median seconds,
//! min–max, median per-round ratio to the kernel's overlayfs), a CSV of
//! every raw sample and an SVG bar chart of the ratios on a log scale.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::runner::{Results, Sample};
use crate::workload::Workload;

/// The driver that ratios are relative to.
pub const BASELINE: &str = "kernel";

/// The rootless drivers that get a ratio table of their own when a run has
/// them: the kernel's overlayfs with `userxattr` and fuse-overlayfs, each
/// in a user namespace.
pub const ROOTLESS_BASELINES: [&str; 2] = ["kernel@userns", "fuse-overlayfs@userns"];

/// One workload × driver summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Median over rounds of this driver's time / the kernel's time.
    pub ratio: Option<f64>,
    /// Largest FUSE server peak RSS over the rounds, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Median upper-layer size after the run, bytes.
    pub upper_bytes: Option<u64>,
}

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

fn samples<'a>(r: &'a Results, w: Workload, d: &'a str) -> impl Iterator<Item = &'a Sample> {
    r.samples
        .iter()
        .filter(move |s| s.workload == w && s.driver == d)
}

/// The summary of `driver` on `w`, if it has samples.
pub fn cell(r: &Results, w: Workload, driver: &str) -> Option<Cell> {
    let secs: Vec<f64> = samples(r, w, driver).map(|s| s.seconds).collect();
    let median_secs = median(&secs)?;
    let uppers: Vec<f64> = samples(r, w, driver)
        .filter_map(|s| s.upper_bytes.map(|b| b as f64))
        .collect();
    Some(Cell {
        median: median_secs,
        min: secs.iter().copied().fold(f64::INFINITY, f64::min),
        max: secs.iter().copied().fold(0.0, f64::max),
        ratio: ratio_to(r, w, driver, BASELINE),
        peak_rss_kib: samples(r, w, driver).filter_map(|s| s.peak_rss_kib).max(),
        upper_bytes: median(&uppers).map(|b| b as u64),
    })
}

/// The median over rounds of `driver`'s time on `w` divided by `base`'s
/// time in the same round.
pub fn ratio_to(r: &Results, w: Workload, driver: &str, base: &str) -> Option<f64> {
    let ratios: Vec<f64> = samples(r, w, driver)
        .filter_map(|s| {
            let b = samples(r, w, base).find(|b| b.round == s.round)?;
            (b.seconds > 0.0).then(|| s.seconds / b.seconds)
        })
        .collect();
    median(&ratios)
}

/// Seconds with three significant digits.
pub fn fmt_secs(s: f64) -> String {
    if s >= 100.0 {
        format!("{s:.0}")
    } else if s >= 10.0 {
        format!("{s:.1}")
    } else if s >= 1.0 {
        format!("{s:.2}")
    } else if s >= 0.1 {
        format!("{s:.3}")
    } else if s >= 0.01 {
        format!("{s:.4}")
    } else {
        format!("{s:.5}")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.2}")
    }
}

fn fmt_bytes(b: u64) -> String {
    const MIB: f64 = (1 << 20) as f64;
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / MIB)
    } else {
        format!("{:.0} KiB", b as f64 / 1024.0)
    }
}

/// `YYYY-MM-DD HH:MM UTC` for `t`.
pub fn fmt_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// A line describing the machine: CPUs, memory, OS and kernel.
pub fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / (1u64 << 20) as f64);
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    format!("{cpus} CPUs ({model}), {mem_gib:.0} GiB RAM, {os}, kernel {kernel}")
}

/// The Markdown report: medians, ratios, server memory, upper sizes, notes.
pub fn markdown(r: &Results) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "strata-bench, {}, {}; {} round{}, {} sizes.\n",
        fmt_time(r.started),
        machine(),
        r.rounds,
        if r.rounds == 1 { "" } else { "s" },
        r.sizes.scale
    );
    let has_base = r.drivers.iter().any(|d| d == BASELINE);
    let header = |o: &mut String, first: &str| {
        let _ = writeln!(o, "| {first} | {} |", r.drivers.join(" | "));
        let _ = writeln!(o, "| --- |{}", " ---: |".repeat(r.drivers.len()));
    };

    let _ = writeln!(
        o,
        "Median seconds (min–max) over the rounds; lower is better.\n"
    );
    header(&mut o, "workload");
    for &w in &r.workloads {
        let mut row = format!("| {w} |");
        for d in &r.drivers {
            match cell(r, w, d) {
                Some(c) => {
                    let _ = write!(
                        row,
                        " {} ({}–{}) |",
                        fmt_secs(c.median),
                        fmt_secs(c.min),
                        fmt_secs(c.max)
                    );
                }
                None => row.push_str(" failed |"),
            }
        }
        let _ = writeln!(o, "{row}");
    }

    if has_base {
        let _ = writeln!(
            o,
            "\nMedian per-round ratio to the kernel's overlayfs (time ÷ kernel's time in the same round); below 1 is faster than the kernel.\n"
        );
        header(&mut o, "workload");
        for &w in &r.workloads {
            let mut row = format!("| {w} |");
            for d in &r.drivers {
                let c = cell(r, w, d).and_then(|c| c.ratio);
                match c {
                    Some(x) => {
                        let _ = write!(row, " {} |", fmt_ratio(x));
                    }
                    None => row.push_str(" – |"),
                }
            }
            let _ = writeln!(o, "{row}");
        }
    }

    for base in ROOTLESS_BASELINES {
        if !r.drivers.iter().any(|d| d == base) {
            continue;
        }
        let _ = writeln!(
            o,
            "\nMedian per-round ratio to {base} (time ÷ {base}'s time in the same round); below 1 is faster.\n"
        );
        header(&mut o, "workload");
        for &w in &r.workloads {
            let mut row = format!("| {w} |");
            for d in &r.drivers {
                match ratio_to(r, w, d, base) {
                    Some(x) => {
                        let _ = write!(row, " {} |", fmt_ratio(x));
                    }
                    None => row.push_str(" – |"),
                }
            }
            let _ = writeln!(o, "{row}");
        }
    }

    let fuse: Vec<&String> = r
        .drivers
        .iter()
        .filter(|d| {
            r.samples
                .iter()
                .any(|s| &&s.driver == d && s.peak_rss_kib.is_some())
        })
        .collect();
    if !fuse.is_empty() {
        let _ = writeln!(
            o,
            "\nPeak RSS of the FUSE server (VmHWM, largest over the rounds).\n"
        );
        let _ = writeln!(
            o,
            "| workload | {} |",
            fuse.iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(o, "| --- |{}", " ---: |".repeat(fuse.len()));
        for &w in &r.workloads {
            let mut row = format!("| {w} |");
            for d in &fuse {
                match cell(r, w, d).and_then(|c| c.peak_rss_kib) {
                    Some(k) => {
                        let _ = write!(row, " {} |", fmt_bytes(k * 1024));
                    }
                    None => row.push_str(" – |"),
                }
            }
            let _ = writeln!(o, "{row}");
        }
    }

    let upper_ws: Vec<Workload> = r
        .workloads
        .iter()
        .copied()
        .filter(|w| w.reports_upper())
        .collect();
    if !upper_ws.is_empty() {
        let _ = writeln!(o, "\nDisk space used by the upper layer after the run.\n");
        header(&mut o, "workload");
        for w in upper_ws {
            let mut row = format!("| {w} |");
            for d in &r.drivers {
                match cell(r, w, d).and_then(|c| c.upper_bytes) {
                    Some(b) => {
                        let _ = write!(row, " {} |", fmt_bytes(b));
                    }
                    None => row.push_str(" – |"),
                }
            }
            let _ = writeln!(o, "{row}");
        }
    }

    let _ = writeln!(o, "\nWorkloads:\n");
    for &w in &r.workloads {
        let cold = if w.cold() {
            " Page cache dropped first."
        } else {
            ""
        };
        let _ = writeln!(o, "- `{w}`: {}.{cold}", w.describe(&r.sizes));
    }
    if !r.notes.is_empty() || !r.failures.is_empty() {
        let _ = writeln!(o, "\nNotes:\n");
        for n in &r.notes {
            let _ = writeln!(o, "- {n}");
        }
        for f in &r.failures {
            let _ = writeln!(
                o,
                "- {} with {} failed in round {}: {}",
                f.workload,
                f.driver,
                f.round + 1,
                f.message
            );
        }
    }
    o
}

/// Every raw sample, one per line.
pub fn csv(r: &Results) -> String {
    let mut o = String::from("workload,driver,round,position,seconds,peak_rss_kib,upper_bytes\n");
    for s in &r.samples {
        let _ = writeln!(
            o,
            "{},{},{},{},{:.6},{},{}",
            s.workload,
            csv_field(&s.driver),
            s.round + 1,
            s.position + 1,
            s.seconds,
            s.peak_rss_kib.map(|v| v.to_string()).unwrap_or_default(),
            s.upper_bytes.map(|v| v.to_string()).unwrap_or_default()
        );
    }
    o
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 8] = [
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

/// A bar chart of the median ratios to the kernel: one group per workload,
/// one bar per driver, bars growing up (slower) or down (faster) from 1 on
/// a log scale.
pub fn svg(r: &Results) -> String {
    let drivers: Vec<&String> = r.drivers.iter().filter(|d| *d != BASELINE).collect();
    let ratio = |w: Workload, d: &str| cell(r, w, d).and_then(|c| c.ratio).filter(|x| *x > 0.0);
    let all: Vec<f64> = r
        .workloads
        .iter()
        .flat_map(|&w| drivers.iter().filter_map(move |d| ratio(w, d)))
        .collect();
    let lo_exp = all
        .iter()
        .fold(0.0f64, |a, x| a.min(x.log10()))
        .floor()
        .min(-1.0);
    let hi_exp = all
        .iter()
        .fold(0.0f64, |a, x| a.max(x.log10()))
        .ceil()
        .max(1.0);

    let (left, right, top, bottom) = (70.0, 20.0, 50.0, 110.0);
    let bar_w = 14.0;
    let group_w = (drivers.len().max(1) as f64) * bar_w + 16.0;
    let plot_w = group_w * r.workloads.len().max(1) as f64;
    let plot_h = 360.0;
    let (width, height) = (left + plot_w + right, top + plot_h + bottom);
    let y = |v: f64| top + plot_h * (hi_exp - v.log10()) / (hi_exp - lo_exp);

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{left}" y="18" font-size="14">Time relative to the kernel's overlayfs (median per-round ratio, log scale; lower is better)</text>"#
    );
    // Grid lines at 1, 2 and 5 times each power of ten.
    let mut e = lo_exp as i32;
    while e <= hi_exp as i32 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(e);
            if v.log10() > hi_exp + 1e-9 {
                continue;
            }
            let yy = y(v);
            let (stroke, label) = if (v - 1.0).abs() < 1e-9 {
                ("#000", true)
            } else if m == 1.0 {
                ("#bbb", true)
            } else {
                ("#eee", m == 2.0 || m == 5.0)
            };
            let _ = writeln!(
                o,
                r#"<line x1="{left}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="{stroke}"/>"#,
                left + plot_w
            );
            if label {
                let _ = writeln!(
                    o,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}×</text>"#,
                    left - 6.0,
                    yy + 4.0,
                    fmt_ratio(v).trim_end_matches('0').trim_end_matches('.')
                );
            }
        }
        e += 1;
    }
    let base_y = y(1.0);
    for (gi, &w) in r.workloads.iter().enumerate() {
        let gx = left + gi as f64 * group_w + 8.0;
        for (di, d) in drivers.iter().enumerate() {
            let Some(v) = ratio(w, d) else { continue };
            let x = gx + di as f64 * bar_w;
            let vy = y(v);
            let (y0, h) = if vy < base_y {
                (vy, base_y - vy)
            } else {
                (base_y, vy - base_y)
            };
            let _ = writeln!(
                o,
                r#"<rect x="{x:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{w} {}: {}×</title></rect>"#,
                bar_w - 2.0,
                h.max(1.0),
                COLORS[di % COLORS.len()],
                xml(d),
                fmt_ratio(v)
            );
        }
        let lx = gx + group_w / 2.0 - 8.0;
        let ly = top + plot_h + 12.0;
        let _ = writeln!(
            o,
            r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="end" transform="rotate(-45 {lx:.1} {ly:.1})">{w}</text>"#
        );
    }
    let _ = writeln!(
        o,
        r##"<rect x="{left}" y="{top}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#888"/>"##
    );
    // Legend.
    let mut lx = left;
    for (di, d) in drivers.iter().enumerate() {
        let _ = writeln!(
            o,
            r#"<rect x="{lx:.1}" y="28" width="10" height="10" fill="{}"/><text x="{:.1}" y="37">{}</text>"#,
            COLORS[di % COLORS.len()],
            lx + 14.0,
            xml(d)
        );
        lx += 24.0 + 7.0 * d.len() as f64;
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Sizes;
    use std::path::PathBuf;

    fn sample(w: Workload, d: &str, round: usize, seconds: f64) -> Sample {
        Sample {
            workload: w,
            driver: d.into(),
            round,
            position: 0,
            seconds,
            peak_rss_kib: None,
            upper_bytes: None,
        }
    }

    fn results() -> Results {
        let w = Workload::Tarx;
        Results {
            drivers: vec!["strata".into(), "kernel".into()],
            workloads: vec![w],
            rounds: 3,
            sizes: Sizes::quick(),
            samples: vec![
                sample(w, "kernel", 0, 1.0),
                sample(w, "strata", 0, 3.0),
                sample(w, "kernel", 1, 2.0),
                sample(w, "strata", 1, 2.0),
                sample(w, "kernel", 2, 1.0),
                sample(w, "strata", 2, 1.5),
            ],
            failures: vec![],
            notes: vec![],
            started: UNIX_EPOCH,
            scratch_root: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn medians_and_per_round_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let r = results();
        let c = cell(&r, Workload::Tarx, "strata").unwrap();
        assert_eq!((c.median, c.min, c.max), (2.0, 1.5, 3.0));
        // Per-round ratios 3, 1, 1.5: the median is 1.5, not 2.0/1.0.
        assert_eq!(c.ratio, Some(1.5));
        assert_eq!(cell(&r, Workload::Tarx, "kernel").unwrap().ratio, Some(1.0));
    }

    #[test]
    fn rootless_runs_get_ratios_to_the_rootless_kernel_and_fuse_overlayfs() {
        let w = Workload::Tarx;
        let mut r = results();
        r.drivers = vec!["strata@userns".into(), "kernel@userns".into()];
        for s in &mut r.samples {
            s.driver = format!("{}@userns", s.driver);
        }
        let md = markdown(&r);
        assert!(md.contains("ratio to kernel@userns"), "{md}");
        assert!(md.contains("| tarx | 1.50 | 1.00 |"), "{md}");
        assert!(!md.contains("ratio to fuse-overlayfs@userns"), "{md}");
        assert!(!md.contains("ratio to the kernel's overlayfs"), "{md}");
        assert_eq!(ratio_to(&r, w, "strata@userns", "kernel@userns"), Some(1.5));
        assert_eq!(ratio_to(&r, w, "strata@userns", "kernel"), None);
    }

    #[test]
    fn outputs_have_every_sample_and_driver() {
        let r = results();
        let md = markdown(&r);
        assert!(
            md.contains("| tarx | 2.00 (1.50–3.00) | 1.00 (1.00–2.00) |"),
            "{md}"
        );
        assert!(md.contains("| tarx | 1.50 | 1.00 |"), "{md}");
        assert_eq!(csv(&r).lines().count(), 7);
        let s = svg(&r);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("<title>tarx strata: 1.50×</title>"));
    }

    #[test]
    fn dates() {
        assert_eq!(fmt_time(UNIX_EPOCH), "1970-01-01 00:00 UTC");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096);
        assert_eq!(fmt_time(t), "2024-02-29 12:34 UTC");
    }
}
