//! `parley`: command-line entry point. Thin wiring only: parse arguments, build the [`server::App`] from the data
//! dir, and serve it over stdio or streamable HTTP; plus the `init`, `audit` and `policy` admin commands.

#![forbid(unsafe_code)]

mod audit;
mod catalog;
mod config;
mod contracts;
mod demo;
mod gate;
mod identity;
mod policy;
mod query;
mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::audit::FileAuditLog;
use crate::catalog::{Lakehouse, open_sql_catalog};
use crate::config::Config;
use crate::contracts::ContractStore;
use crate::demo::{DataDir, InitOutcome};
use crate::gate::Gate;
use crate::identity::{Directory, LocalIdentity, Principal};
use crate::policy::{CedarPolicy, PolicyBackend};
use crate::server::{App, ParleyServer};

/// Parley: governed access to lakehouse tables for AI agents, over MCP.
#[derive(Parser)]
#[command(name = "parley", version, about)]
struct Cli {
    /// Data dir holding the catalog, warehouse, contracts, policy and audit log
    /// [default: the platform data dir + /parley, e.g. ~/.local/share/parley].
    #[arg(long, env = "PARLEY_HOME", global = true)]
    data_dir: Option<PathBuf>,
    /// Configuration file [default: <data dir>/parley.toml when present].
    #[arg(long, env = "PARLEY_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP over stdio (default) or streamable HTTP; creates the demo lakehouse on first run.
    Serve {
        /// Serve streamable HTTP at this address (path /mcp) instead of stdio, e.g. 127.0.0.1:8765.
        #[arg(long)]
        http: Option<SocketAddr>,
        /// Principal the caller acts as [env: PARLEY_PRINCIPAL; default: analyst].
        #[arg(long)]
        principal: Option<String>,
    },
    /// Create (or repair) the demo lakehouse in the data dir without serving.
    Init {
        /// Rebuild the demo tables and contracts even if the data dir is complete (policy and audit are kept).
        #[arg(long)]
        force: bool,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the audit log; prints the count and head hash, or the first broken record.
    Verify,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the decision for one request and the policies that decided it.
    Check {
        /// Principal id.
        #[arg(long)]
        principal: String,
        /// Action: discover, read_contract, query, request_access, review_requests, decide_request, admin.
        #[arg(long)]
        action: String,
        /// Table as namespace.table, a namespace, or * for the whole lakehouse.
        #[arg(long)]
        resource: String,
        /// Purpose to put in the request context.
        #[arg(long)]
        purpose: Option<String>,
    },
}

fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("parley")
}

#[tokio::main]
async fn main() -> Result<()> {
    // Logs go to stderr: stdout belongs to the MCP stdio transport.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PARLEY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let dir = DataDir::new(&cli.data_dir.clone().unwrap_or_else(default_data_dir))?;
    let mut config = Config::load(&dir.root, cli.config.as_deref())?;
    match cli.command {
        Command::Serve { http, principal } => {
            if let Some(p) = principal {
                config.principal = p;
            }
            let app = build_app(&dir, config).await?;
            match http {
                None => serve_stdio(app).await,
                Some(addr) => serve_http(app, addr).await,
            }
        }
        Command::Init { force } => {
            let outcome = demo::ensure(&dir, &config.catalog_name, force).await?;
            let what = match outcome {
                InitOutcome::Created => "created the demo lakehouse in",
                InitOutcome::Repaired => "rebuilt the demo lakehouse in",
                InitOutcome::AlreadyComplete => "the demo lakehouse is already complete in",
                InitOutcome::External => "left alone the existing (non-demo) lakehouse in",
            };
            println!("{what} {}", dir.root.display());
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let path = dir.audit_log();
            match audit::verify(&path) {
                Ok(v) => {
                    println!(
                        "ok: {} records, head {} ({})",
                        v.count,
                        v.head,
                        path.display()
                    );
                    Ok(())
                }
                Err(e) => bail!("audit chain broken: {e}"),
            }
        }
        Command::Policy {
            command:
                PolicyCommand::Check {
                    principal,
                    action,
                    resource,
                    purpose,
                },
        } => policy_check(&dir, &principal, &action, &resource, purpose).await,
    }
}

async fn policy_check(
    dir: &DataDir,
    principal: &str,
    action: &str,
    resource: &str,
    purpose: Option<String>,
) -> Result<()> {
    let policy = load_policy(&dir.policy())?;
    let action: policy::Action = action.parse().map_err(anyhow::Error::msg)?;
    let resource = if resource == "*" {
        policy::Resource::Lakehouse
    } else if !resource.contains('.') {
        policy::Resource::Namespace(resource.to_string())
    } else {
        let table = catalog::TableName::parse(resource).map_err(anyhow::Error::msg)?;
        let contracts = ContractStore::load(&dir.contracts());
        policy::Resource::Table(contracts::table_facts(
            &table.namespace_str(),
            &table.name,
            contracts.get(&table.to_string()).map(|c| &c.contract),
        ))
    };
    let who = Principal::new(principal, policy.groups_of(principal));
    let d = policy.authorize(&who, action, &resource, &policy::RequestContext { purpose });
    println!(
        "{}: {}",
        if d.allowed() { "ALLOW" } else { "DENY" },
        d.reason()
    );
    Ok(())
}

/// Builds the shared application state from the data dir (creating the demo lakehouse when it is new).
async fn build_app(dir: &DataDir, config: Config) -> Result<Arc<App>> {
    match demo::ensure(dir, &config.catalog_name, false).await? {
        InitOutcome::Created => {
            tracing::info!(data_dir = %dir.root.display(), "created the demo lakehouse")
        }
        InitOutcome::Repaired => {
            tracing::info!(data_dir = %dir.root.display(), "repaired the demo lakehouse")
        }
        _ => {}
    }
    let policy = Arc::new(load_policy(&dir.policy())?);
    let identity = Arc::new(LocalIdentity::new(&config.principal, policy.as_ref()));
    let audit = Arc::new(FileAuditLog::open(&dir.audit_log())?);
    let contracts = ContractStore::load(&dir.contracts());
    let catalog = open_sql_catalog(&dir.catalog_db(), &dir.warehouse(), &config.catalog_name)
        .await
        .context("cannot open the Iceberg catalog")?;
    tracing::info!(
        data_dir = %dir.root.display(),
        principal = %config.principal,
        audit = %audit.path().display(),
        "parley ready"
    );
    Ok(Arc::new(App {
        config,
        identity,
        gate: Gate::new(policy, audit),
        lakehouse: Lakehouse::new(catalog, contracts),
    }))
}

fn load_policy(dir: &Path) -> Result<CedarPolicy> {
    CedarPolicy::load(dir).with_context(|| {
        format!(
            "cannot load the policy in {}; fix the file named above (see examples/policy/ for a working set)",
            dir.display()
        )
    })
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn serve_stdio(app: Arc<App>) -> Result<()> {
    let service = ParleyServer::new(app)
        .serve(rmcp::transport::stdio())
        .await
        .context("MCP initialization over stdio failed")?;
    let ct = service.cancellation_token();
    tokio::select! {
        r = service.waiting() => { r?; }
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            ct.cancel();
        }
    }
    Ok(())
}

async fn serve_http(app: Arc<App>, addr: SocketAddr) -> Result<()> {
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "serving HTTP on a non-loopback address without token authentication: every caller acts as the \
             configured principal"
        );
    }
    let ct = CancellationToken::new();
    let mut hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    hosts.push(addr.ip().to_string());
    let service = StreamableHttpService::new(
        move || Ok(ParleyServer::new(app.clone())),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_allowed_hosts(hosts)
            .with_cancellation_token(ct.child_token()),
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(url = %format!("http://{}/mcp", listener.local_addr()?), "serving MCP over streamable HTTP");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            ct.cancel();
        })
        .await?;
    Ok(())
}
