//! The docs stay true: every type and file ARCHITECTURE.md's code map names exists, and every tool the server
//! lists is documented in the README.

use std::collections::BTreeSet;

fn source() -> String {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let mut files = Vec::new();
    walk(
        std::path::Path::new(&format!("{}/src", env!("CARGO_MANIFEST_DIR"))),
        &mut files,
    );
    files.join("\n")
}

#[test]
fn architecture_code_map_names_exist() {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/ARCHITECTURE.md")).unwrap();
    let src = source();
    let mut checked = BTreeSet::new();
    for quoted in doc.split('`').skip(1).step_by(2) {
        if quoted.starts_with("src/")
            || quoted.starts_with("tools/")
            || quoted.starts_with("schemas/")
        {
            let path = quoted.trim_end_matches("*.md");
            assert!(
                std::path::Path::new(&format!("{root}/{path}")).exists(),
                "{quoted} exists"
            );
            continue;
        }
        // Type names (CamelCase identifiers, optionally Type::method).
        let ident = quoted.split("::").next().unwrap();
        let is_type = ident.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && ident.chars().all(|c| c.is_ascii_alphanumeric())
            && ident.chars().any(|c| c.is_ascii_lowercase());
        if !is_type {
            continue;
        }
        let defined = ["struct", "enum", "trait", "type"].iter().any(|kw| {
            [" ", "<", ":", ";", "("]
                .iter()
                .any(|end| src.contains(&format!("{kw} {ident}{end}")))
        });
        // Or imported from a dependency (e.g. rmcp's `StreamableHttpService`).
        let imported = src.lines().any(|l| {
            let words = || l.split(|c: char| !c.is_ascii_alphanumeric() && c != '_');
            (l.trim_start().starts_with("use ") || l.starts_with("    "))
                && words().any(|w| w == ident)
                && !l.trim_start().starts_with("//")
        });
        assert!(
            defined || imported,
            "ARCHITECTURE.md names `{quoted}` but src/ neither defines nor uses {ident}"
        );
        if let Some(method) = quoted.split("::").nth(1).map(|m| {
            m.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .next()
                .unwrap()
        }) {
            assert!(
                src.contains(&format!("fn {method}")),
                "ARCHITECTURE.md names `{quoted}`"
            );
        }
        checked.insert(ident.to_string());
    }
    assert!(checked.len() >= 10, "the code map names types: {checked:?}");
}

#[test]
fn readme_documents_every_tool() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    for tool in std::fs::read_dir(format!("{root}/tools"))
        .unwrap()
        .flatten()
    {
        let name = tool
            .path()
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .to_string();
        assert!(
            readme.contains(&format!("`{name}`")),
            "README documents {name}"
        );
    }
}
