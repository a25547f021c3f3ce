//! `parley contract validate`: contracts checked before deployment, with the server's own messages.

use std::process::Command;

use crate::util::BIN;

fn validate(paths: &[&std::path::Path]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["contract", "validate"])
        .args(paths)
        .output()
        .expect("run parley contract validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_examples_pass_and_a_broken_contract_is_refused_with_the_servers_message() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/contracts");
    let (code, text) = validate(&[&examples]);
    assert_eq!(code, 0, "{text}");
    let files = text.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(files >= 4, "{text}");
    assert!(text.contains("for table sales.orders"), "{text}");
    assert!(text.contains("0 refused"), "{text}");

    // A contract missing a required field, one that is not YAML, and a file that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(examples.join("sales/orders.yaml")).unwrap();
    let no_id: String = good
        .lines()
        .filter(|l| !l.starts_with("id:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let ns = dir.path().join("sales");
    std::fs::create_dir(&ns).unwrap();
    std::fs::write(ns.join("orders.yaml"), no_id).unwrap();
    std::fs::write(ns.join("broken.yaml"), "apiVersion: [unclosed").unwrap();
    std::fs::write(ns.join("fine.yaml"), &good).unwrap();
    let missing = dir.path().join("nope.yaml");
    let (code, text) = validate(&[dir.path(), &missing]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("orders.yaml does not conform to ODCS v3.2.0") && text.contains("id"),
        "{text}"
    );
    assert!(text.contains("broken.yaml is not valid YAML"), "{text}");
    assert!(
        text.contains("cannot read contract") && text.contains("nope.yaml"),
        "{text}"
    );
    assert!(
        text.contains("4 contract file(s) checked, 3 refused"),
        "{text}"
    );

    // Nothing to check is an error, not a silent success.
    let empty = tempfile::tempdir().unwrap();
    let (code, text) = validate(&[empty.path()]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("no contract files"), "{text}");
}

/// `parley contract diff OLD NEW`: each change breaking or compatible; breaking changes need a new major version.
#[test]
fn contract_diff_names_breaking_changes_and_demands_a_major_version() {
    let dir = tempfile::tempdir().unwrap();
    let old = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/contracts/sales/products.yaml");
    let text = std::fs::read_to_string(&old).unwrap();
    let dropped = text.replace(
        "      - name: launched_on\n        logicalType: date\n        physicalType: date\n        required: true\n        classification: public\n        description: Date the product was launched.\n",
        "",
    );
    assert_ne!(dropped, text);
    let diff = |new_text: &str| {
        let new = dir.path().join("new.yaml");
        std::fs::write(&new, new_text).unwrap();
        let out = Command::new(BIN)
            .args(["contract", "diff"])
            .arg(&old)
            .arg(&new)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    // The same major version (2.0.0 → 2.1.0) with a column dropped: refused.
    let (code, out) = diff(&dropped.replace("version: 2.0.0", "version: 2.1.0"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("breaking   launched_on: removed from the contract"),
        "{out}"
    );
    assert!(out.contains("need a new major version"), "{out}");
    // Under 3.0.0 it may be published (consumers are told).
    let (code, out) = diff(&dropped.replace("version: 2.0.0", "version: 3.0.0"));
    assert_eq!(code, 0, "{out}");
    // A compatible change needs no new major version.
    let added = text.replace(
        "team:\n",
        "      - name: color\n        logicalType: string\n        physicalType: string\nteam:\n",
    );
    assert_ne!(added, text);
    let (code, out) = diff(&added.replace("version: 2.0.0", "version: 2.0.1"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("compatible color: added (string)"), "{out}");
    assert!(out.contains("1 change(s), none breaking"), "{out}");
}
