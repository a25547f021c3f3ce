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
