//! Test harness: a demo lakehouse built once per test run by the real binary, cheap per-test copies of it (each
//! with its own audit log), and MCP clients (rmcp's) connected to the spawned `parley` binary.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use rmcp::model::{CallToolRequestParams, CallToolResult, JsonObject};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{Peer, RoleClient, ServiceExt};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_parley");

/// The demo lakehouse made by `parley init`, shared read-only by all tests.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let out = std::process::Command::new(BIN)
                .args(["init", "--data-dir"])
                .arg(dir.path())
                .output()
                .expect("run parley init");
            assert!(
                out.status.success(),
                "parley init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            dir
        })
        .path()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A data dir of its own for one test: the template's catalog, contracts and policy (the catalog points at the
/// template's warehouse files, which no test writes), with an empty audit log.
pub struct Lake {
    pub dir: tempfile::TempDir,
}

impl Lake {
    pub fn new() -> Lake {
        let t = template();
        let dir = tempfile::tempdir().unwrap();
        for f in ["catalog.db", "parley-init.json"] {
            std::fs::copy(t.join(f), dir.path().join(f)).unwrap();
        }
        copy_dir(&t.join("contracts"), &dir.path().join("contracts"));
        copy_dir(&t.join("policy"), &dir.path().join("policy"));
        Lake { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn audit_path(&self) -> PathBuf {
        self.path().join("audit").join("audit.jsonl")
    }

    /// The audit records written so far, parsed.
    pub fn audit(&self) -> Vec<Value> {
        match std::fs::read_to_string(self.audit_path()) {
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
                .collect(),
            Err(_) => vec![],
        }
    }

    /// A `parley` command on this data dir (stdin/stdout/stderr not yet configured).
    pub fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.env("PARLEY_HOME", self.path())
            .env_remove("PARLEY_PRINCIPAL")
            .env("PARLEY_LOG", "warn");
        cmd
    }

    /// Serves this lake over stdio as `principal`, with extra environment, and connects rmcp's client.
    pub async fn connect(&self, principal: &str, env: &[(&str, &str)]) -> Client {
        let transport = TokioChildProcess::builder(self.command().configure(|cmd| {
            cmd.args(["serve", "--principal", principal]);
            for (k, v) in env {
                cmd.env(k, v);
            }
        }))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn parley serve")
        .0;
        ().serve(transport).await.expect("MCP initialize")
    }
}

pub type Client = RunningService<RoleClient, ()>;

/// Calls a tool with JSON arguments.
pub async fn call(client: &Peer<RoleClient>, tool: &str, args: Value) -> CallToolResult {
    let args: JsonObject = args.as_object().cloned().expect("arguments are an object");
    client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool} call failed at the protocol level: {e}"))
}

/// The text content of a result.
pub fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text())
        .map(|t| t.text.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Structured content of a successful result; panics with the error text otherwise.
pub fn ok(r: &CallToolResult) -> Value {
    assert_ne!(r.is_error, Some(true), "tool error: {}", text(r));
    r.structured_content.clone().expect("structured content")
}

/// The error text of a failed result; panics if the call succeeded.
pub fn err(r: &CallToolResult) -> String {
    assert_eq!(
        r.is_error,
        Some(true),
        "expected a tool error, got {:?}",
        r.structured_content
    );
    assert!(r.structured_content.is_none(), "an error carries no data");
    text(r)
}

/// `parley serve --principal P` on a lake, driven by raw JSON-RPC lines over piped stdio: for tests that need the
/// process itself (its pid, its exit) or bytes no MCP client would send.
pub struct RawServer {
    pub child: tokio::process::Child,
    input: tokio::process::ChildStdin,
    output: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Lake {
    /// Starts a [`RawServer`] as `principal` with extra environment.
    pub fn spawn_raw(&self, principal: &str, env: &[(&str, &str)]) -> RawServer {
        use tokio::io::AsyncBufReadExt;
        let mut child = self
            .command()
            .args(["serve", "--principal", principal])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let output = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        RawServer {
            child,
            input,
            output,
        }
    }
}

impl RawServer {
    /// Writes one line (a newline is added).
    pub async fn send(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        self.input.write_all(line.as_bytes()).await.unwrap();
        self.input.write_all(b"\n").await.unwrap();
        self.input.flush().await.unwrap();
    }

    /// The next line the server writes, parsed; fails after 30 s without one.
    pub async fn reply(&mut self) -> Value {
        let line =
            tokio::time::timeout(std::time::Duration::from_secs(30), self.output.next_line())
                .await
                .expect("an answer within 30 s")
                .unwrap()
                .expect("the server is still writing");
        serde_json::from_str(&line).unwrap()
    }

    /// Sends `message` and, if it is a request (it has an id), returns the answer.
    pub async fn call(&mut self, message: &Value) -> Option<Value> {
        self.send(&message.to_string()).await;
        match message.get("id") {
            Some(_) => Some(self.reply().await),
            None => None,
        }
    }

    /// The `initialize` request and `initialized` notification of a 2025-06-18 client.
    pub async fn initialize(&mut self) {
        let init = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
        assert!(self.call(&init).await.unwrap().get("result").is_some());
        self.call(&serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
    }

    /// Closes stdin and waits (at most 30 s) for the server to exit.
    pub async fn close(self) -> std::process::ExitStatus {
        let RawServer {
            mut child, input, ..
        } = self;
        drop(input);
        tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
            .await
            .expect("the server exits once stdin closes")
            .unwrap()
    }
}

/// CPU seconds the process `pid` uses over two seconds that start a second from now.
pub async fn cpu_after_a_second(pid: u32) -> f64 {
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let before = cpu_seconds(pid);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    cpu_seconds(pid) - before
}

/// CPU seconds (user + system) the process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}
