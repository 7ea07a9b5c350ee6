//! Plain-text table output for the CLI.

use serde_json::Value;

/// A JSON value as table text (`-` for null).
pub fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(x) if x.is_empty() => "-".to_owned(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

/// A Unix-seconds JSON value as UTC date-time text.
pub fn ts(v: &Value) -> String {
    v.as_i64()
        .map(crate::clock::format_utc)
        .unwrap_or_else(|| "-".to_owned())
}

/// Formats rows under headers with padded columns.
pub fn render_table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.into_iter().collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

/// Prints a table to stdout.
pub fn print_table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    crate::out!("{}", render_table(headers, rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let t = render_table(
            &["ID", "NAME"],
            vec![
                vec!["a".into(), "x".into()],
                vec!["long-id".into(), "y".into()],
            ],
        );
        assert_eq!(t, "ID       NAME\na        x\nlong-id  y\n");
    }

    #[test]
    fn values_render() {
        assert_eq!(s(&Value::Null), "-");
        assert_eq!(s(&serde_json::json!(5)), "5");
        assert_eq!(ts(&serde_json::json!(0)), "1970-01-01 00:00:00");
    }
}
