//! The shape of the code: dependencies point down. No module of `src/`
//! imports another that (through others) imports it back, and no adapter
//! (Kafka, Redis, PostgreSQL, telemetry), the domain or the gateway reaches
//! up into the workers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/kafka/consumer.rs` → `kafka::consumer`; `src/kafka/mod.rs` → `kafka`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts.join("::")
}

/// Every `crate::a::b…` and `super::a…` path in `code`.
fn paths(code: &str) -> Vec<&str> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for start in ["crate::", "super::"]
        .iter()
        .flat_map(|p| code.match_indices(p).map(|(i, _)| i))
    {
        if code[..start].chars().next_back().is_some_and(word) {
            continue;
        }
        let mut end = start;
        let rest = &code[start..];
        let mut chars = rest.char_indices().peekable();
        // Words joined by `::`.
        loop {
            let from = chars.peek().map(|(i, _)| *i);
            while chars.peek().is_some_and(|(_, c)| word(*c)) {
                chars.next();
            }
            let to = chars.peek().map_or(rest.len(), |(i, _)| *i);
            if from == Some(to) {
                break;
            }
            end = start + to;
            if rest[to..].starts_with("::") && rest[to + 2..].starts_with(word) {
                chars.next();
                chars.next();
            } else {
                break;
            }
        }
        if end > start {
            found.push(&code[start..end]);
        }
    }
    found
}

/// The modules each module's code (tests left out) refers to by `crate::`
/// or `super::` paths, resolved to the longest module that exists.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        let text = std::fs::read_to_string(file).expect("read source");
        // Code only: tests and comment lines (doc links name modules too) left out.
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let here: Vec<&str> = module.split("::").filter(|p| !p.is_empty()).collect();
        let mut deps = BTreeSet::new();
        for found in paths(&code) {
            let mut segments: Vec<&str> = found.split("::").collect();
            let mut full: Vec<&str> = if segments[0] == "crate" {
                segments.remove(0);
                Vec::new()
            } else {
                let ups = segments.iter().take_while(|s| **s == "super").count();
                segments.drain(..ups);
                here[..here.len().saturating_sub(ups)].to_vec()
            };
            full.extend(segments);
            let target = (1..=full.len())
                .rev()
                .map(|k| full[..k].join("::"))
                .find(|m| modules.contains(m));
            if let Some(target) = target {
                if target != module && !module.starts_with(&format!("{target}::")) {
                    deps.insert(target);
                }
            }
        }
        edges.insert(module, deps);
    }
    edges
}

#[test]
fn the_modules_of_src_import_each_other_without_a_circle() {
    let edges = imports();
    // Depth-first search; a module met again while on the stack closes a circle.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        circles: &mut Vec<String>,
    ) {
        state.insert(m.to_owned(), 1);
        stack.push(m.to_owned());
        for d in edges.get(m).into_iter().flatten() {
            match state.get(d).copied().unwrap_or(0) {
                0 => visit(d, edges, state, stack, circles),
                1 => {
                    let from = stack.iter().position(|s| s == d).unwrap_or(0);
                    circles.push(format!("{} -> {d}", stack[from..].join(" -> ")));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.to_owned(), 2);
    }
    let (mut state, mut stack, mut circles) = (BTreeMap::new(), Vec::new(), Vec::new());
    for m in edges.keys() {
        if !state.contains_key(m) {
            visit(m, &edges, &mut state, &mut stack, &mut circles);
        }
    }
    assert!(circles.is_empty(), "import circles: {circles:#?}");
    assert!(edges.len() > 40, "the modules were found: {}", edges.len());
}

#[test]
fn adapters_the_domain_and_the_gateway_never_reach_up_into_the_workers() {
    let below = [
        "domain",
        "kafka",
        "counters",
        "store",
        "telemetry",
        "gateway",
    ];
    let upward: Vec<String> = imports()
        .into_iter()
        .filter(|(m, _)| below.contains(&m.split("::").next().unwrap_or_default()))
        .flat_map(|(m, deps)| {
            deps.into_iter()
                .filter(|d| d == "workers" || d.starts_with("workers::"))
                .map(move |d| format!("{m} -> {d}"))
        })
        .collect();
    assert!(upward.is_empty(), "{upward:#?}");
    let domain_io: Vec<String> = imports()
        .into_iter()
        .filter(|(m, _)| m == "domain" || m.starts_with("domain::"))
        .flat_map(|(m, deps)| {
            deps.into_iter()
                .filter(|d| !(d == "domain" || d.starts_with("domain::")))
                .map(move |d| format!("{m} -> {d}"))
        })
        .collect();
    assert!(
        domain_io.is_empty(),
        "the domain stays pure: {domain_io:#?}"
    );
}
