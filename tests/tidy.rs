//! Invariants of the source tree, checked by reading it (in the style of rust-analyzer's tidy tests): what may
//! import what, who may decide, and that no agent input can reach a panic through `unwrap`.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its path relative to the crate root.
fn sources(dir: &str) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read source dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join(dir), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read source");
            let rel = p
                .strip_prefix(root)
                .expect("under the crate")
                .to_string_lossy()
                .replace('\\', "/");
            (rel, text)
        })
        .collect()
}

/// The part of a file that is not a test module (by convention the `#[cfg(test)]` module comes last) and whose
/// lines are not comments.
fn code(text: &str) -> Vec<(usize, &str)> {
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..end]
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .collect()
}

/// Files that are test modules in full (declared under `#[cfg(test)]` by their parent).
const TEST_MODULES: [&str; 1] = ["src/governed/differential.rs"];

#[test]
fn rmcp_is_used_only_by_the_server_and_main() {
    let allowed =
        |f: &str| f == "src/main.rs" || f == "src/server.rs" || f.starts_with("src/server/");
    let offenders: Vec<String> = sources("src")
        .iter()
        .filter(|(f, _)| !allowed(f))
        .flat_map(|(f, text)| {
            code(text)
                .into_iter()
                .filter(|(_, l)| l.contains("rmcp::") || l.contains("use rmcp"))
                .map(move |(n, l)| format!("{f}:{n}: {}", l.trim()))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "the MCP SDK belongs to the transport layer (src/server*, main); found:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn only_the_gate_asks_the_policy() {
    // `policy.rs` defines `authorize`; `main.rs` runs `parley policy explain`, an operator's dry run that serves
    // no request. Every request a principal makes is decided by the gate.
    let allowed = ["src/gate.rs", "src/policy.rs", "src/main.rs"];
    let offenders: Vec<String> = sources("src")
        .iter()
        .filter(|(f, _)| !allowed.contains(&f.as_str()) && !TEST_MODULES.contains(&f.as_str()))
        .flat_map(|(f, text)| {
            code(text)
                .into_iter()
                .filter(|(_, l)| l.contains(".authorize("))
                .map(move |(n, l)| format!("{f}:{n}: {}", l.trim()))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "policy decisions go through the gate (src/gate.rs), which audits them; found:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn no_unwrap_and_only_invariant_expects_outside_tests() {
    // Set-up code run by the operator, not by agent input: the CLI, the demo lakehouse and benchmark data.
    let setup = [
        "src/main.rs",
        "src/demo.rs",
        "src/benchdata.rs",
        "src/init.rs",
    ];
    // Each `expect` left states an invariant no input can break, and why.
    let invariants = [
        // The record batch is built from the same (name, type, array) triples as its schema.
        "audit columns match their schema",
        // Writing canonical JSON into a hasher has no I/O that can fail.
        "hashing does not fail",
        // Terms hold strings, integers, string-keyed maps and timestamps.
        "terms serialize to JSON",
        // Cedar type names are constants of Parley's own schema.
        "valid Cedar type name",
        // The ODCS JSON Schema is embedded in the binary at build time.
        "embedded ODCS schema is JSON",
        "embedded ODCS schema compiles",
        // reqwest's client with rustls and a timeout, built once at start-up.
        "HTTP client builds",
        // HMAC accepts keys of any length (RFC 2104).
        "HMAC takes keys of any length",
    ];
    let mut offenders = Vec::new();
    for (f, text) in sources("src") {
        if setup.contains(&f.as_str()) || TEST_MODULES.contains(&f.as_str()) {
            continue;
        }
        for (n, l) in code(&text) {
            let unwrap = l.contains(".unwrap()");
            let expect = l.contains(".expect(") && !invariants.iter().any(|i| l.contains(i));
            if unwrap || expect {
                offenders.push(format!("{f}:{n}: {}", l.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "a panic on an input path takes the call (or the server) down: return an error instead, or add the \
         invariant to this test with its reason; found:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_rules_above_see_violations() {
    // The checks read real code: a line that breaks each rule is caught, a comment or a test is not.
    let sample = "use rmcp::model::Tool;\nlet x = y.unwrap();\n// z.unwrap()\n#[cfg(test)]\nmod tests { a.unwrap(); }\n";
    let lines: Vec<&str> = code(sample).into_iter().map(|(_, l)| l).collect();
    assert_eq!(lines, ["use rmcp::model::Tool;", "let x = y.unwrap();"]);
}
