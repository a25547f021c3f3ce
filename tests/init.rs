//! The embedded default: `parley init` is idempotent, repairs an interrupted init, never touches a lakehouse it
//! did not create, and a first `serve` on an empty dir creates everything.

use serde_json::json;

use crate::util::{BIN, Lake, call, ok};

fn init(dir: &std::path::Path) -> String {
    let out = std::process::Command::new(BIN)
        .args(["init", "--data-dir"])
        .arg(dir)
        .env("PARLEY_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn current_snapshots(dir: &std::path::Path) -> Vec<String> {
    // The catalog's pointer to each table's current metadata file: unchanged means nothing was rewritten.
    let mut files: Vec<String> = walk(&dir.join("warehouse"))
        .into_iter()
        .filter(|p| p.ends_with(".metadata.json"))
        .collect();
    files.sort();
    files
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

#[tokio::test]
async fn init_is_idempotent_and_repairs_an_interrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    assert!(init(dir.path()).contains("created the demo lakehouse"));
    let before = current_snapshots(dir.path());
    assert!(init(dir.path()).contains("already complete"));
    assert_eq!(
        current_snapshots(dir.path()),
        before,
        "a second init rewrites nothing"
    );

    // Simulate a crash mid-init: marker says initializing, one table's files are gone.
    std::fs::write(
        dir.path().join("parley-init.json"),
        r#"{"state":"initializing","layout_version":1}"#,
    )
    .unwrap();
    std::fs::remove_dir_all(dir.path().join("warehouse/sales/orders")).unwrap();
    // A policy edit made by the user survives the repair.
    let policy = dir.path().join("policy/policy.cedar");
    let edited = std::fs::read_to_string(&policy).unwrap() + "\n// local edit\n";
    std::fs::write(&policy, &edited).unwrap();
    assert!(init(dir.path()).contains("rebuilt"));
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), edited);

    let lake = Lake { dir };
    let client = lake.connect("analyst", &[]).await;
    let q = ok(&call(
        &client,
        "query",
        json!({"sql": "SELECT count(*) FROM sales.orders"}),
    )
    .await);
    assert_eq!(q["rows"][0][0], 120_000, "rebuilt once, not duplicated");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_foreign_lakehouse_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("catalog.db"), b"").unwrap();
    assert!(init(dir.path()).contains("left alone"));
    assert_eq!(std::fs::read(dir.path().join("catalog.db")).unwrap(), b"");
    assert!(!dir.path().join("warehouse").exists());
}

#[tokio::test]
async fn first_serve_creates_the_demo_and_env_principal_applies() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake { dir };
    let transport = rmcp::transport::TokioChildProcess::new({
        let mut cmd = lake.command();
        cmd.arg("serve").env("PARLEY_PRINCIPAL", "marketing-agent");
        cmd
    })
    .unwrap();
    let client = rmcp::ServiceExt::serve((), transport).await.unwrap();
    let list = ok(&call(&client, "list_tables", json!({})).await);
    assert_eq!(
        list["total"], 3,
        "marketing-agent sees the sales namespace only"
    );
    client.cancel().await.unwrap();
    assert!(lake.path().join("parley-init.json").exists());
    assert_eq!(lake.audit()[0]["principal"], "marketing-agent");
}

/// An empty answer says why when the server can tell without revealing a table: a catalog name that matches
/// nothing (also in the log, with the names the catalog file does hold), or a principal the policy does not know.
#[tokio::test]
async fn an_empty_lakehouse_says_why() {
    let lake = Lake::new();
    std::fs::write(
        lake.path().join("parley.toml"),
        "catalog_name = \"warehouse\"\n",
    )
    .unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        lake.command()
            .args(["serve", "--principal", "analyst"])
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("serve ends at end of input")
    .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("catalog_name matches no namespace") && log.contains("parley"),
        "{log}"
    );
    let client = lake.connect("analyst", &[]).await;
    let r = ok(&call(&client, "list_tables", json!({})).await);
    assert_eq!(r["total"], 0);
    let why = r["empty_because"].as_str().unwrap_or_default();
    assert!(why.contains("\"warehouse\" holds no tables"), "{r}");
    client.cancel().await.unwrap();

    // The right catalog, a principal the policy does not know: said as such; a known one gets no such note.
    std::fs::remove_file(lake.path().join("parley.toml")).unwrap();
    let client = lake.connect("stranger", &[]).await;
    let r = ok(&call(&client, "list_tables", json!({})).await);
    assert_eq!(r["total"], 0);
    let why = r["empty_because"].as_str().unwrap_or_default();
    assert!(why.contains("does not know principal \"stranger\""), "{r}");
    client.cancel().await.unwrap();
    let client = lake.connect("analyst", &[]).await;
    let r = ok(&call(&client, "list_tables", json!({"filter": "no-such-table"})).await);
    assert_eq!(r["total"], 0);
    assert!(r.get("empty_because").is_none(), "{r}");
    client.cancel().await.unwrap();
}

/// `parley init --catalog` records a catalog given on the command line in parley.toml and prepares it: a draft
/// contract per table, the catalog itself untouched; the same name twice, or a malformed property, is refused.
#[tokio::test]
async fn init_takes_a_catalog_from_the_command_line() {
    let other = tempfile::tempdir().unwrap();
    let catalog = parley::catalog::open_sql_catalog(
        &other.path().join("c.db"),
        &other.path().join("w"),
        "ext",
    )
    .await
    .unwrap();
    let ns = iceberg::NamespaceIdent::new("web".to_string());
    catalog
        .create_namespace(&ns, std::collections::HashMap::new())
        .await
        .unwrap();
    let schema = iceberg::spec::Schema::builder()
        .with_fields(vec![std::sync::Arc::new(
            iceberg::spec::NestedField::required(
                1,
                "id",
                iceberg::spec::Type::Primitive(iceberg::spec::PrimitiveType::Long),
            ),
        )])
        .build()
        .unwrap();
    catalog
        .create_table(
            &ns,
            iceberg::TableCreation::builder()
                .name("events".to_string())
                .schema(schema)
                .build(),
        )
        .await
        .unwrap();
    let before = std::fs::read(other.path().join("c.db")).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["init", "--data-dir"])
            .arg(dir.path())
            .args(["--catalog", "ext", "--type", "sql", "--uri"])
            .arg(format!("sqlite:{}", other.path().join("c.db").display()))
            .arg("--property")
            .arg(format!(
                "warehouse=file://{}",
                other.path().join("w").display()
            ))
            .args(extra)
            .env("PARLEY_LOG", "warn");
        cmd.output().unwrap()
    };
    let out = run(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("added catalog \"ext\""), "{stdout}");
    assert!(
        stdout.contains("drafted the contract of web.events"),
        "{stdout}"
    );
    assert!(dir.path().join("contracts/web/events.yaml").exists());
    let config = std::fs::read_to_string(dir.path().join("parley.toml")).unwrap();
    assert!(
        config.contains("[[catalogs]]") && config.contains("name = \"ext\""),
        "{config}"
    );
    assert_eq!(
        std::fs::read(other.path().join("c.db")).unwrap(),
        before,
        "the catalog is only read"
    );

    let again = run(&[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already names a catalog \"ext\""));
    let bad = run(&["--property", "credentials"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not KEY=VALUE"));
}
