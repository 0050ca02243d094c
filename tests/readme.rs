//! The `console` blocks of README.md and every page under docs/ are real: every `$ command` in
//! them is run (from the repository root, `streetclip` on PATH, a fresh text-embedding cache;
//! README first, then the pages in path order, sharing one scratch folder) and its output
//! (stdout and stderr, as a terminal shows them) must be what the page prints. Integers and words
//! must match exactly; decimals to 1e-3 relative + 0.015 absolute, as CPUs differ in the last
//! bits of float kernels. `README_BLESS=1 cargo test --test readme` rewrites the blocks with
//! the actual output. Blocks whose output varies from run to run (timings) are `text` blocks.

mod common;
use common::*;
use std::process::Command;

const SCRATCH: &str = "/tmp/streetclip-readme";

struct Example {
    command: String,
    /// Line range of the printed output in the README.
    output: std::ops::Range<usize>,
}

/// The `$ command` lines (joined at trailing `\`) of every console block, with their output.
fn examples(lines: &[&str]) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut in_block = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("```") {
            in_block = line == "```console";
            i += 1;
            continue;
        }
        if in_block && line.starts_with("$ ") {
            let mut command = line[2..].to_string();
            while command.ends_with('\\') {
                command.pop();
                i += 1;
                command.push_str(lines[i].trim_start());
            }
            out.push(Example {
                command,
                output: i + 1..i + 1,
            });
        } else if in_block {
            if let Some(last) = out.last_mut() {
                last.output.end = i + 1;
            }
        }
        i += 1;
    }
    out
}

fn run(command: &str, cache: &std::path::Path) -> String {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_streetclip"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{command} 2>&1"))
        .current_dir(root())
        .env("PATH", path)
        .env("STREETCLIP_CACHE_DIR", cache)
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Splits a line into text and decimal numbers.
fn tokens(line: &str) -> Vec<(bool, String)> {
    let mut out: Vec<(bool, String)> = Vec::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let digit_at = |j: usize| chars.get(j).is_some_and(|c| c.is_ascii_digit());
        if digit_at(i)
            || (chars[i] == '-' && digit_at(i + 1) && (i == 0 || !chars[i - 1].is_alphanumeric()))
        {
            i += 1;
            while digit_at(i) {
                i += 1;
            }
            let mut decimal = false;
            if chars.get(i) == Some(&'.') && digit_at(i + 1) {
                decimal = true;
                i += 1;
                while digit_at(i) {
                    i += 1;
                }
            }
            if matches!(chars.get(i), Some('e' | 'E'))
                && (digit_at(i + 1)
                    || (matches!(chars.get(i + 1), Some('-' | '+')) && digit_at(i + 2)))
            {
                decimal = true;
                i += 2;
                while digit_at(i) {
                    i += 1;
                }
            }
            out.push((decimal, chars[start..i].iter().collect()));
        } else {
            while i < chars.len()
                && !chars[i].is_ascii_digit()
                && !(chars[i] == '-' && digit_at(i + 1))
            {
                i += 1;
            }
            if i == start {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            match out.last_mut() {
                Some((false, prev)) => prev.push_str(&text),
                _ => out.push((false, text)),
            }
        }
    }
    out
}

fn lines_agree(actual: &str, expected: &str) -> bool {
    let (a, e) = (tokens(actual), tokens(expected));
    a.len() == e.len()
        && a.iter().zip(&e).all(|((da, ta), (de, te))| match (da, de) {
            (true, true) => {
                let (x, y): (f64, f64) = (ta.parse().unwrap(), te.parse().unwrap());
                (x - y).abs() <= 1e-3 * y.abs() + 0.015
            }
            _ => ta == te,
        })
}

/// README.md, then every Markdown page under docs/ in path order.
fn pages() -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "md") {
                out.push(p);
            }
        }
    }
    let mut out = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut out);
    out
}

/// Runs a page's examples; the drifted ones as messages, and the page with the actual outputs.
fn check_page(path: &std::path::Path, cache: &std::path::Path) -> (usize, Vec<String>, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let examples = examples(&lines);
    let (mut blessed, mut drifted, mut copied) = (Vec::new(), Vec::new(), 0);
    for ex in &examples {
        let actual = run(&ex.command, cache);
        let actual: Vec<&str> = actual.lines().collect();
        let expected = &lines[ex.output.clone()];
        let same = actual.len() == expected.len()
            && actual.iter().zip(expected).all(|(a, e)| lines_agree(a, e));
        if !same {
            drifted.push(format!(
                "{}: $ {}\n--- page\n{}\n--- actual\n{}",
                path.strip_prefix(root()).unwrap_or(path).display(),
                ex.command,
                expected.join("\n"),
                actual.join("\n")
            ));
        }
        blessed.extend(lines[copied..ex.output.start].iter().map(|l| l.to_string()));
        blessed.extend(actual.iter().map(|l| l.to_string()));
        copied = ex.output.end;
    }
    blessed.extend(lines[copied..].iter().map(|l| l.to_string()));
    (examples.len(), drifted, blessed.join("\n") + "\n")
}

#[test]
fn every_console_example_prints_what_the_readme_shows() {
    im2gps3k_sample();
    let _ = std::fs::remove_dir_all(SCRATCH);
    let cache = tmpdir();
    let bless = std::env::var_os("README_BLESS").is_some();
    let (mut count, mut drifted) = (0, Vec::new());
    for page in pages() {
        let (n, page_drifted, blessed) = check_page(&page, cache.path());
        count += n;
        if bless && !page_drifted.is_empty() {
            std::fs::write(&page, blessed).unwrap();
        }
        drifted.extend(page_drifted);
    }
    assert!(count >= 10, "the console examples were not found");
    assert!(
        bless || drifted.is_empty(),
        "examples that print something else now (README_BLESS=1 rewrites them):\n\n{}",
        drifted.join("\n\n")
    );
}

/// Every relative link of README.md and docs/ names a file that exists, and an anchor, if any,
/// a heading of that file (GitHub's slugs: lower case, punctuation dropped, spaces as hyphens).
#[test]
fn every_link_between_the_pages_resolves() {
    fn slug(heading: &str) -> String {
        heading
            .trim_start_matches('#')
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect()
    }
    fn anchors(text: &str) -> Vec<String> {
        let mut in_code = false;
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with("```") {
                in_code = !in_code;
            } else if !in_code && line.starts_with('#') {
                out.push(slug(line));
            }
        }
        out
    }
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for target in link_targets(&text) {
            if target.starts_with("http") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dest = match file {
                "" => page.clone(),
                f => page.parent().unwrap().join(f),
            };
            let ok = dest.exists()
                && (anchor.is_empty()
                    || anchors(&std::fs::read_to_string(&dest).unwrap_or_default())
                        .iter()
                        .any(|a| a == anchor));
            if !ok {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The targets of the Markdown links `[text](target)` outside code blocks and code spans.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Code spans hold example syntax, not links.
        let plain: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            match after.find(')') {
                Some(j) if !after[..j].contains(' ') => {
                    out.push(after[..j].to_string());
                    rest = &after[j..];
                }
                _ => rest = after,
            }
        }
    }
    out
}

#[test]
fn decimals_are_compared_with_tolerance_and_the_rest_exactly() {
    assert!(lines_agree("  47.29%  a cat", "  47.30%  a cat"));
    assert!(!lines_agree("  47.29%  a cat", "  48.29%  a cat"));
    assert!(!lines_agree("300 rows", "301 rows"));
    assert!(!lines_agree("GB_2643743_019.jpg", "GB_2643744_019.jpg"));
    assert!(lines_agree(
        "\"p\": 0.4816509783267975",
        "\"p\": 0.4816509783267"
    ));
    assert!(!lines_agree("a cat", "a dog"));
    assert!(lines_agree("lr 1.00e-4 x", "lr 1.0e-4 x"));
}
