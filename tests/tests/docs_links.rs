//! The documentation's links stay right: every relative markdown link (`](path)`,
//! `](path#anchor)`) in `docs/`, the README and the other `*.md` files of the workspace names a
//! file or directory that exists relative to the linking file, and an anchor into a markdown
//! file names one of its headings (as GitHub makes them). Every `docs/…` file named in the
//! workspace's sources, scripts and docs exists too. Only std: no markdown parser.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every file under `dir` whose name `keep` accepts, skipping build output, fuzz corpora and
/// hidden directories.
fn walk(dir: &Path, keep: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let skipped = ["target", "corpus", "artifacts", "node_modules"];
            if !name.starts_with('.') && !skipped.contains(&name.as_str()) {
                walk(&path, keep, out);
            }
        } else if keep(&path) {
            out.push(path);
        }
    }
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    walk(
        &root(),
        &|p| p.extension().is_some_and(|e| e == "md"),
        &mut files,
    );
    files.sort();
    files
}

/// The lines of a markdown file outside fenced code blocks, with inline code spans removed.
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut prose = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                prose.push_str(part);
            }
        }
        lines.push((n + 1, prose));
    }
    lines
}

/// The link targets of a line: what follows each `](` up to its `)`.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let end = rest.find([')', ' ']).unwrap_or(rest.len());
        targets.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    targets
}

/// A heading's anchor as GitHub makes it: lower case, letters, digits, `_`, `-` and spaces
/// kept (spaces become `-`), everything else dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file's headings (a repeated one gets `-1`, `-2`, … as on GitHub).
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if fenced || hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let mut anchor = base.clone();
        let mut n = 0;
        while !seen.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
    }
    seen
}

fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn relative_markdown_links_resolve() {
    let files = markdown_files();
    assert!(
        files.iter().any(|f| f.ends_with("docs/usage/agent.md")),
        "no docs found under {}",
        root().display()
    );
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        for (n, line) in prose_lines(&text) {
            for target in link_targets(&line) {
                let external = ["http://", "https://", "mailto:"];
                if target.is_empty() || external.iter().any(|s| target.starts_with(s)) {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let linked = if path.is_empty() {
                    file.clone()
                } else {
                    file.parent().unwrap().join(path)
                };
                if !linked.exists() {
                    broken.push(format!("{}:{n}: {target}: no such file", shown(file)));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if linked.extension().is_some_and(|e| e == "md") {
                    let headings = anchors(&fs::read_to_string(&linked).unwrap());
                    if !headings.contains(anchor) {
                        broken.push(format!(
                            "{}:{n}: {target}: no heading #{anchor} in {}",
                            shown(file),
                            shown(&linked)
                        ));
                    }
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn docs_files_named_in_the_workspace_exist() {
    let sources = ["md", "rs", "toml", "sh", "py", "service", "conf"];
    let mut files = Vec::new();
    walk(
        &root(),
        &|p| {
            p.extension()
                .is_some_and(|e| sources.iter().any(|s| e == *s))
        },
        &mut files,
    );
    files.push(root().join(".ci/run"));
    let mut missing = Vec::new();
    for file in &files {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(i) = rest.find("docs/") {
                let before = rest[..i].chars().next_back();
                let mention: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '*'))
                    .collect();
                let mention = mention.trim_end_matches('.');
                rest = &rest[i + 5..];
                let named_file = [".md", ".json", ".png", ".svg"]
                    .iter()
                    .any(|e| mention.ends_with(e));
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                    || mention.contains('*')
                    || !named_file
                {
                    continue;
                }
                if !root().join(mention).exists() {
                    missing.push(format!("{}:{}: {mention}", shown(file), n + 1));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs files named but missing:\n{}",
        missing.join("\n")
    );
}
