//! How times, sizes and tables are shown, as docker and podman show them.

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The current time as RFC 3339 (UTC, nanoseconds).
pub fn now_rfc3339() -> String {
    strata_layerdb::config::now_rfc3339()
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 time (`2024-01-02T03:04:05.123Z`, or with a
/// `+hh:mm` offset) into seconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se;
    let rest = &s[19..];
    let rest = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    if let Some(off) = rest.strip_prefix(['+', '-']) {
        let sign = if rest.starts_with('-') { -1 } else { 1 };
        let oh: i64 = off.get(0..2)?.parse().ok()?;
        let om: i64 = off.get(3..5)?.parse().ok()?;
        secs -= sign * (oh * 3600 + om * 60);
    }
    Some(secs)
}

/// A duration as docker words it (`Less than a second`, `5 seconds`,
/// `About a minute`, `2 hours`, `3 days`, `2 weeks`, `4 months`, `2 years`).
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 1 {
        return "Less than a second".into();
    }
    if s == 1 {
        return "1 second".into();
    }
    if s < 60 {
        return format!("{s} seconds");
    }
    let minutes = s / 60;
    if minutes == 1 {
        return "About a minute".into();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    let hours = (s as f64 / 3600.0 + 0.5) as i64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", hours / 24 / 365)
}

/// `human_duration(now - then) + " ago"`, or `""` when unknown.
pub fn ago(then: Option<i64>) -> String {
    match then {
        Some(t) => format!("{} ago", human_duration(now_secs() - t)),
        None => String::new(),
    }
}

/// A size as podman shows it: decimal units, three significant digits
/// (`873 B`, `1.5 kB`, `2.13 MB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{} {}", sig3(v), UNITS[i])
}

/// Go's `%.3g` for values below 1000: three significant digits, trailing
/// zeros dropped.
fn sig3(v: f64) -> String {
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    if s == "1000" {
        return "1e+03".into();
    }
    s
}

/// A table printed like docker's: columns padded to their widest cell plus
/// three spaces; the last column is not padded.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a header row.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row.
    pub fn render(&self) -> String {
        let n = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; n];
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                line.push_str(c);
                if i + 1 < r.len() {
                    let pad = widths[i] - c.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Quotes a command for the COMMAND column: `"sh -c 'exit 3'"`, cut to 20
/// characters with `…` as docker does.
pub fn command_column(args: &[String]) -> String {
    let joined = args
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let cut: String = if joined.chars().count() > 20 {
        let mut s: String = joined.chars().take(19).collect();
        s.push('…');
        s
    } else {
        joined
    };
    format!("\"{cut}\"")
}

/// Expands a Go-template-like format (`{{.Id}}`, `{{.State.Status}}`,
/// `{{json .Config}}`, `\t`, `\n`) against a JSON value.
pub fn go_template(tpl: &str, v: &serde_json::Value) -> String {
    let tpl = tpl.replace("\\t", "\t").replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = tpl.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expr = after[..end].trim();
        let (json, path) = match expr.strip_prefix("json ") {
            Some(p) => (true, p.trim()),
            None => (false, expr),
        };
        let mut cur = v;
        let mut found = true;
        for part in path
            .trim_start_matches('.')
            .split('.')
            .filter(|p| !p.is_empty())
        {
            match cur.get(part) {
                Some(x) => cur = x,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if found {
            match cur {
                serde_json::Value::String(s) if !json => out.push_str(s),
                serde_json::Value::Null if !json => out.push_str("<no value>"),
                x => out.push_str(&x.to_string()),
            }
        } else {
            out.push_str("<no value>");
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Expands podman's `table TEMPLATE`: a header row where each `{{.Field}}`
/// becomes `heading(Field)`, then the template for each row; cells are
/// split at tabs and aligned as [`Table`] aligns them.
pub fn table_template(
    tpl: &str,
    rows: &[serde_json::Value],
    heading: &dyn Fn(&str) -> String,
) -> String {
    let tpl = tpl.replace("\\t", "\t").replace("\\n", "\n");
    let mut head = String::new();
    let mut rest = tpl.as_str();
    while let Some(start) = rest.find("{{") {
        head.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            head.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let expr = after[..end].trim();
        let path = expr.strip_prefix("json ").unwrap_or(expr).trim();
        let field = path.rsplit('.').next().unwrap_or(path);
        head.push_str(&heading(field));
        rest = &after[end + 2..];
    }
    head.push_str(rest);
    let cells = |line: &str| line.split('\t').map(str::to_string).collect::<Vec<_>>();
    let mut t = Table { rows: Vec::new() };
    for line in head.lines() {
        t.row(cells(line));
    }
    for r in rows {
        for line in go_template(&tpl, r).lines() {
            t.row(cells(line));
        }
    }
    t.render()
}

/// A field name as a column heading: `CreatedAt` → `CREATED AT`.
pub fn heading(field: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = field.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
        let prev_lower = i > 0 && chars[i - 1].is_lowercase();
        if i > 0 && c.is_uppercase() && (prev_lower || next_lower) {
            out.push(' ');
        }
        out.extend(c.to_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_podman() {
        assert_eq!(human_size(873), "873 B");
        assert_eq!(human_size(1500), "1.5 kB");
        assert_eq!(human_size(2_134_567), "2.13 MB");
        assert_eq!(human_size(123_456_789), "123 MB");
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(10_000), "10 kB");
    }

    #[test]
    fn durations_like_docker() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(70), "About a minute");
        assert_eq!(human_duration(130), "2 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(7200), "2 hours");
        assert_eq!(human_duration(86400 * 3), "3 days");
    }

    #[test]
    fn rfc3339_round_trip() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:01.5Z"), Some(951_868_801));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        let now = now_rfc3339();
        assert!((parse_rfc3339(&now).unwrap() - now_secs()).abs() <= 1);
    }

    #[test]
    fn tables_pad_columns() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["xyz".into(), "1".into()]);
        assert_eq!(t.render(), "A     LONGER\nxyz   1\n");
    }

    #[test]
    fn templates_walk_json() {
        let v = serde_json::json!({"Id": "abc", "State": {"ExitCode": 3}});
        assert_eq!(go_template("{{.Id}} {{.State.ExitCode}}", &v), "abc 3");
        assert_eq!(go_template("{{json .State}}", &v), "{\"ExitCode\":3}");
    }

    #[test]
    fn table_templates_have_a_header_and_aligned_cells() {
        let rows = vec![
            serde_json::json!({"Repository": "busybox", "ID": "abc"}),
            serde_json::json!({"Repository": "x", "ID": "def"}),
        ];
        let h = |f: &str| heading(f);
        assert_eq!(
            table_template("{{.Repository}}\\t{{.ID}}", &rows, &h),
            "REPOSITORY   ID\nbusybox      abc\nx            def\n"
        );
        assert_eq!(heading("CreatedAt"), "CREATED AT");
        assert_eq!(heading("ID"), "ID");
    }

    #[test]
    fn command_column_quotes() {
        let a: Vec<String> = ["sh", "-c", "exit 3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(command_column(&a), "\"sh -c 'exit 3'\"");
    }
}
