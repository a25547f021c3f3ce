//! `parley`: command-line entry point. Thin wiring only: parse arguments, build the [`server::App`] from the data
//! dir, and serve it over stdio or streamable HTTP; plus the `init`, `audit` and `policy` admin commands.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use parley::audit::FileAuditLog;
use parley::catalog::Lakehouse;
use parley::config::Config;
use parley::contracts::ContractStore;
use parley::demo::{DataDir, InitOutcome};
use parley::gate::Gate;
use parley::http::HttpAuth;
use parley::identity::{
    Anonymous, DevIssuer, Directory, FileKeys, HttpKeys, Identity, JwtValidator, KeySource,
    LocalIdentity, Principal, StaticKeys,
};
use parley::policy::{CedarPolicy, PolicyBackend, ReloadablePolicy};
use parley::server::stdio::LineTransport;
use parley::server::{App, ParleyServer};

/// mimalloc rather than glibc's malloc: a tool call allocates and frees many small JSON values, which glibc spent
/// a tenth of the server's time on (`malloc_consolidate`, `unlink_chunk`), and DataFusion's own CLI ships with it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        #[arg(long, value_parser = parse_listen_address)]
        http: Option<SocketAddr>,
        /// Principal the caller acts as on stdio [env: PARLEY_PRINCIPAL; default: analyst]. Over HTTP the
        /// principal comes from each request's bearer token; with --http and --principal both given, HTTP is
        /// served without tokens as this principal, on a loopback address only.
        #[arg(long)]
        principal: Option<String>,
        /// Trust tokens minted by `parley token` (a signing key kept in the data dir). For local use only.
        #[arg(long)]
        dev_issuer: bool,
    },
    /// Mint a bearer token from the local dev issuer, for `serve --http --dev-issuer`.
    Token {
        /// Principal id (the token's subject).
        #[arg(long)]
        principal: String,
        /// Groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Scopes, comma-separated.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Prepare the data dir without serving: with no catalogs configured, create (or repair) the demo
    /// lakehouse; for the catalogs parley.toml names (or a SQL catalog already in the data dir), write a starter
    /// policy and a draft contract per table, reading the catalogs only.
    Init {
        /// Rebuild the demo tables and contracts even if the data dir is complete (policy and audit are kept).
        #[arg(long)]
        force: bool,
        /// Serve this catalog: its name (the first part of table names when several are configured). Written to
        /// `<data dir>/parley.toml` as a `[[catalogs]]` entry, then prepared like one configured there.
        #[arg(long, requires = "uri")]
        catalog: Option<String>,
        /// The catalog's type with `--catalog`: rest or sql.
        #[arg(long = "type", default_value = "rest", requires = "catalog")]
        kind: String,
        /// The catalog's `uri` with `--catalog` (a REST base URL, or a `sqlite:` URL).
        #[arg(long, requires = "catalog")]
        uri: Option<String>,
        /// More catalog properties with `--catalog`, Iceberg's names: `--property warehouse=analytics
        /// --property credential=id:secret`.
        #[arg(long = "property", value_name = "KEY=VALUE", requires = "catalog")]
        properties: Vec<String>,
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
    /// Data contracts (ODCS v3 YAML).
    Contract {
        #[command(subcommand)]
        command: ContractCommand,
    },
    /// Benchmark data (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum ContractCommand {
    /// Check contract files before deploying them, with the messages the server gives when it loads them; exits
    /// with status 1 when any is refused.
    Validate {
        /// Contract files (`.yaml`) or directories laid out as `<data>/contracts/<namespace>/<table>.yaml`.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Publish a new version of a table's contract into the data dir: checked against the version in force
    /// (breaking changes need a new major version and --effective at least the contract's notice period away,
    /// `slaProperties: noticePeriod` days, 30 without one), written as <table>@<version>.yaml with its
    /// effectiveFrom, announced to the holders of live grants (their my_notices). A serving Parley reloads it;
    /// the old version stays in force until the date. Exits with status 1 when the version is refused.
    Publish {
        /// The new contract version (ODCS YAML naming its table in schema[].physicalName).
        file: PathBuf,
        /// When it takes effect: RFC 3339 or YYYY-MM-DD (midnight UTC) [default: now].
        #[arg(long)]
        effective: Option<String>,
    },
    /// What a new version of a contract changes for its consumers, column by column (breaking or compatible);
    /// exits with status 1 when a breaking change comes without a new major version.
    Diff {
        /// The contract in force.
        old: PathBuf,
        /// The new version.
        new: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Write TPC-H at a scale factor as Iceberg tables (namespace `tpch`) into an empty data dir.
    Data {
        /// Scale factor: 1 is about 8.7 million rows (lineitem 6 million).
        #[arg(long, default_value_t = 1.0)]
        sf: f64,
    },
    /// Write a catalog of many tiny tables (metadata and contracts only) into an empty data dir.
    Catalog {
        /// Number of tables (100 per namespace).
        #[arg(long, default_value_t = 10_000)]
        tables: usize,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the audit log and the signed checkpoints that anchor it (a truncated, shortened or
    /// replaced log fails); prints the count, head hash and audit key, or what is broken.
    Verify {
        /// Start checking at this sequence number (earlier records are trusted).
        #[arg(long)]
        from: Option<u64>,
        /// The audit key's public key (hex, as this command prints it) to verify the checkpoints with, instead of
        /// the key in the data dir: pin it somewhere the server cannot write.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Print the last records.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
    /// Print the records matching every given filter.
    Search {
        /// Principal id.
        #[arg(long)]
        principal: Option<String>,
        /// Table (matches records on it, also among several tables).
        #[arg(long)]
        table: Option<String>,
        /// Tool name, e.g. query.
        #[arg(long)]
        tool: Option<String>,
        /// allowed, denied or error.
        #[arg(long)]
        decision: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the decision for one request and the policies that decided it.
    Check {
        /// Principal id.
        #[arg(long)]
        principal: String,
        /// Action: discover, read_contract, query, request_access, review_requests, decide_request, read_audit,
        /// admin.
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

/// Stack of every runtime thread. Parsing and dropping a long SQL expression chain recurses once per operator
/// (DataFusion's planner and optimizer grow their stacks on demand; the parsed syntax tree's drop does not), so
/// threads get room for the deepest chain `query.max_sql_bytes` allows. Only the pages touched are committed.
const THREAD_STACK_BYTES: usize = 64 << 20;

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK_BYTES)
        .build()?
        .block_on(run())
}

async fn run() -> Result<()> {
    // Logs go to stderr: stdout belongs to the MCP stdio transport.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PARLEY_LOG")
                // rmcp's own info-level span wraps every request's future: entered and left on every poll, it
                // cost an idle agent's call ~10% of its CPU, and says nothing Parley's logs do not.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn")),
        )
        .init();
    let cli = Cli::parse();
    let dir = DataDir::new(&cli.data_dir.clone().unwrap_or_else(default_data_dir))?;
    let mut config = Config::load(&dir.root, cli.config.as_deref())?;
    match cli.command {
        Command::Serve {
            http,
            principal,
            dev_issuer,
        } => {
            let local_http = http.is_some() && principal.is_some();
            if let Some(p) = principal {
                config.principal = p;
            }
            match http {
                None => serve_stdio(build_app(&dir, config, false).await?).await,
                // Token-less local mode: every HTTP caller acts as the named principal, so it is served on
                // loopback only (clients that cannot do OAuth, the MCP conformance suite).
                Some(addr) if local_http => {
                    if !addr.ip().is_loopback() {
                        anyhow::bail!(
                            "--principal with --http serves without tokens, as {:?}, so it listens on loopback \
                             only; {addr} is not a loopback address. Use 127.0.0.1 or [::1], or drop --principal \
                             and let callers bring tokens",
                            config.principal
                        );
                    }
                    if dev_issuer {
                        anyhow::bail!(
                            "--dev-issuer has no use with --principal: without tokens, every caller is {:?}",
                            config.principal
                        );
                    }
                    tracing::warn!(
                        principal = %config.principal,
                        "serving HTTP without tokens: every caller on this machine acts as this principal"
                    );
                    serve_http(build_app(&dir, config, false).await?, addr, None).await
                }
                Some(addr) => {
                    let validator = token_validator(&dir, &config, dev_issuer)?;
                    serve_http(build_app(&dir, config, true).await?, addr, Some(validator)).await
                }
            }
        }
        Command::Token {
            principal,
            groups,
            scopes,
            ttl,
        } => {
            let ttl = parley::identity::parse_ttl(&ttl).map_err(anyhow::Error::msg)?;
            let issuer = DevIssuer::load_or_create(&dev_key_path(&dir))?;
            println!(
                "{}",
                issuer.mint(&principal, &groups, &scopes, ttl, &config.auth.audience)?
            );
            Ok(())
        }
        Command::Contract {
            command: ContractCommand::Publish { file, effective },
        } => {
            let effective = match effective {
                None => None,
                Some(text) => Some(parley::contracts::parse_instant(&text).ok_or_else(|| {
                    anyhow::anyhow!("--effective {text:?}: use RFC 3339 or YYYY-MM-DD")
                })?),
            };
            let now = parley::clock::Clock::from_env().now();
            match parley::publish::publish(&dir, &file, effective, now).await {
                Ok(p) => {
                    for c in &p.changes {
                        println!("{:?} {}: {}", c.impact, c.column, c.change);
                    }
                    println!(
                        "published {} v{}{} at {}, in force from {}",
                        p.table,
                        p.version,
                        p.replaces
                            .as_deref()
                            .map(|v| format!(" (replacing v{v})"))
                            .unwrap_or_default(),
                        p.path.display(),
                        p.effective.format("%Y-%m-%dT%H:%M:%SZ")
                    );
                    println!("{} grant holder(s) told", p.told.len());
                    for (grant, holder) in &p.under_old {
                        println!("made under the old version: {grant} ({holder})");
                    }
                    Ok(())
                }
                Err(e) => {
                    eprintln!("refused: {e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Contract {
            command: ContractCommand::Diff { old, new },
        } => {
            let read = |path: &Path| -> Result<parley::contracts::Contract> {
                let yaml = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Ok(parley::contracts::parse(&yaml, path)?)
            };
            let (before, after) = (read(&old)?, read(&new)?);
            let changes = parley::compat::contract_changes(&before, &after);
            for c in &changes {
                let impact = match c.impact {
                    parley::compat::Impact::Breaking => "breaking  ",
                    parley::compat::Impact::Compatible => "compatible",
                };
                println!("{impact} {}: {}", c.column, c.change);
            }
            let breaking = changes
                .iter()
                .any(|c| c.impact == parley::compat::Impact::Breaking);
            let (from, to) = (
                parley::compat::major_version(&before.version),
                parley::compat::major_version(&after.version),
            );
            match (breaking, from, to) {
                (false, ..) => {
                    println!(
                        "{} change(s), none breaking: {} → {} may be a minor version",
                        changes.len(),
                        before.version,
                        after.version
                    );
                    Ok(())
                }
                (true, Some(a), Some(b)) if b > a => {
                    println!(
                        "breaking changes under a new major version ({} → {}): consumers must be told before it \
                         takes effect",
                        before.version, after.version
                    );
                    Ok(())
                }
                (true, ..) => {
                    println!(
                        "breaking changes need a new major version: {} → {} does not raise it",
                        before.version, after.version
                    );
                    std::process::exit(1);
                }
            }
        }
        Command::Contract {
            command: ContractCommand::Validate { paths },
        } => {
            let mut refused = 0;
            let mut checked = 0;
            for path in &paths {
                for v in parley::contracts::validate(path) {
                    checked += 1;
                    match v.result {
                        Ok((table, c)) => println!(
                            "ok       {}: {} {} for table {table}",
                            v.path.display(),
                            c.id,
                            c.version
                        ),
                        Err(e) => {
                            refused += 1;
                            println!("refused  {e}");
                        }
                    }
                }
            }
            if checked == 0 {
                anyhow::bail!(
                    "no contract files (.yaml or .yml) found under {}",
                    paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            println!("{checked} contract file(s) checked, {refused} refused");
            if refused > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Bench {
            command: BenchCommand::Data { sf },
        } => {
            let summary = parley::benchdata::write_tpch(&dir, sf, &config.catalog_name).await?;
            for (table, rows, secs) in summary.tables {
                println!("tpch.{table:<9} {rows:>10} rows  {secs:>7.1} s");
            }
            println!("TPC-H SF {sf} written to {}", dir.root.display());
            Ok(())
        }
        Command::Bench {
            command: BenchCommand::Catalog { tables },
        } => {
            parley::benchdata::write_wide_catalog(&dir, tables, &config.catalog_name).await?;
            println!("{tables} tables written to {}", dir.root.display());
            Ok(())
        }
        Command::Init {
            catalog: Some(name),
            kind,
            uri,
            properties,
            ..
        } => {
            let settings = catalog_from_flags(&name, &kind, uri, &properties)?;
            let path = cli
                .config
                .clone()
                .unwrap_or_else(|| dir.root.join("parley.toml"));
            add_catalog_to_config(&path, &settings)?;
            println!("added catalog {name:?} to {}", path.display());
            let config = Config::load(&dir.root, cli.config.as_deref())?;
            report_prepared(&dir, parley::init::prepare_existing(&config, &dir).await?);
            Ok(())
        }
        Command::Init { force, .. } if !config.catalogs.is_empty() => {
            if force {
                bail!(
                    "--force rebuilds the demo lakehouse; parley.toml names catalogs, which `init` only reads"
                );
            }
            report_prepared(&dir, parley::init::prepare_existing(&config, &dir).await?);
            Ok(())
        }
        Command::Init { force, .. } => {
            let outcome = parley::demo::ensure(&dir, &config.catalog_name, force).await?;
            if outcome == InitOutcome::External {
                // A SQL catalog someone else wrote (e.g. pyiceberg's SqlCatalog): prepare it like a configured one,
                // opening its file read-only.
                println!(
                    "left alone the existing (non-demo) lakehouse in {}",
                    dir.root.display()
                );
                let mut read_only = config.clone();
                read_only.catalogs = parley::catalog::open::effective(&config, &dir);
                for c in &mut read_only.catalogs {
                    if let Some(uri) = c.properties.get_mut("uri") {
                        *uri = uri.replace("mode=rwc", "mode=ro");
                    }
                }
                match parley::init::prepare_existing(&read_only, &dir).await {
                    Ok(prepared) => report_prepared(&dir, prepared),
                    Err(e) => eprintln!(
                        "could not read its catalog to draft contracts ({e:#}); nothing was written"
                    ),
                }
                return Ok(());
            }
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
            command: AuditCommand::Tail { lines },
        } => {
            require_audit_log(&dir)?;
            let records = parley::audit::read_all(&dir.audit_log())?;
            for r in records.iter().skip(records.len().saturating_sub(lines)) {
                println!("{}", serde_json::to_string(r)?);
            }
            Ok(())
        }
        Command::Audit {
            command:
                AuditCommand::Search {
                    principal,
                    table,
                    tool,
                    decision,
                },
        } => {
            require_audit_log(&dir)?;
            for r in parley::audit::read_all(&dir.audit_log())? {
                let e = &r.entry;
                let keep = principal.as_ref().is_none_or(|p| &e.principal == p)
                    && tool.as_ref().is_none_or(|t| &e.tool == t)
                    && decision.as_ref().is_none_or(|d| &e.decision == d)
                    && table.as_ref().is_none_or(|t| e.resource.names_any(t));
                if keep {
                    println!("{}", serde_json::to_string(&r)?);
                }
            }
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { from, public_key },
        } => {
            let path = dir.audit_log();
            let anchor = dir.audit_anchor();
            if !path.exists() && !anchor.exists() {
                bail!(
                    "no audit log at {}: is --data-dir (or PARLEY_HOME) the data dir the server uses?",
                    path.display()
                );
            }
            let key = match public_key {
                Some(k) => Some(
                    parley::anchor::parse_public_key(&k)
                        .map_err(|e| anyhow::anyhow!("--public-key: {e}"))?,
                ),
                None => None,
            };
            match parley::audit::verify_anchored(&path, from, &anchor, key) {
                Ok((v, checkpoints)) => {
                    let key = parley::anchor::public_key(&anchor)
                        .ok()
                        .flatten()
                        .map_or("none".to_string(), |k| hex::encode(k.to_bytes()));
                    println!(
                        "ok: {} records, head {} ({}); {} signed checkpoints agree (audit key {key})",
                        v.count,
                        v.head,
                        path.display(),
                        checkpoints.len()
                    );
                    Ok(())
                }
                Err(e) => bail!("audit log broken: {e}"),
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
        } => match policy_check(&dir, &principal, &action, &resource, purpose).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Exit 2, apart from a decision's deny (1).
                eprintln!("Error: {e:#}");
                std::process::exit(2);
            }
        },
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
    let action: parley::policy::Action = action.parse().map_err(anyhow::Error::msg)?;
    let resource = if resource == "*" {
        parley::policy::Resource::Lakehouse
    } else if !resource.contains('.') {
        parley::policy::Resource::Namespace(resource.to_string())
    } else {
        let table = parley::catalog::TableName::parse(resource).map_err(anyhow::Error::msg)?;
        let loaded = ContractStore::load(&dir.contracts()).get(&table.to_string());
        parley::policy::Resource::Table(parley::contracts::table_facts(
            &table.namespace_str(),
            &table.name,
            loaded.as_deref().map(|c| &c.contract),
        ))
    };
    let who = Principal::new(principal, policy.groups_of(principal));
    let d = policy.authorize(
        &who,
        action,
        &resource,
        &parley::policy::RequestContext {
            purpose,
            grant: None,
        },
    );
    println!(
        "{}: {}",
        if d.allowed() { "ALLOW" } else { "DENY" },
        d.reason()
    );
    if !d.allowed() {
        // Scripts test the decision by the exit status: 0 allow, 1 deny (2: the check itself failed).
        std::process::exit(1);
    }
    Ok(())
}

/// The secret salting masked columns, created (random, mode 0600) on first use.
fn mask_secret(dir: &DataDir) -> Result<String> {
    let path = dir.root.join("secrets").join("mask-salt");
    if let Ok(secret) = std::fs::read_to_string(&path) {
        return Ok(secret.trim().to_string());
    }
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(&path, &secret)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(secret)
}

fn dev_key_path(dir: &DataDir) -> PathBuf {
    dir.root.join("dev-issuer").join("ed25519.pem")
}

/// The bearer-token validator HTTP serving needs: the dev issuer, a JWKS file, a JWKS URL, or OIDC discovery.
fn token_validator(dir: &DataDir, config: &Config, dev_issuer: bool) -> Result<JwtValidator> {
    let mut settings = config.auth.clone();
    let source: Arc<dyn KeySource> = if dev_issuer {
        tracing::warn!(
            "trusting the local dev issuer: tokens minted by `parley token` are accepted"
        );
        settings.issuer = Some(parley::identity::DEV_ISSUER.to_string());
        Arc::new(StaticKeys(
            DevIssuer::load_or_create(&dev_key_path(dir))?.jwks(),
        ))
    } else if let Some(file) = &settings.jwks_file {
        Arc::new(FileKeys(file.clone()))
    } else if settings.jwks_url.is_some() || settings.issuer.is_some() {
        Arc::new(HttpKeys::new(
            settings.jwks_url.clone(),
            settings.issuer.clone(),
        ))
    } else {
        bail!(
            "serving HTTP needs token validation: set auth.issuer (OIDC discovery), auth.jwks_url or auth.jwks_file \
             in parley.toml (or PARLEY_AUTH_ISSUER), or pass --dev-issuer for local use with `parley token`"
        );
    };
    JwtValidator::new(settings, source).map_err(anyhow::Error::msg)
}

/// Builds the shared application state from the data dir (creating the demo lakehouse when it is new). On
/// HTTP (`authenticated`), callers are who their tokens say and nobody else.
async fn build_app(dir: &DataDir, config: Config, authenticated: bool) -> Result<Arc<App>> {
    if config.catalogs.is_empty() {
        match parley::demo::ensure(dir, &config.catalog_name, false).await? {
            InitOutcome::Created => {
                tracing::info!(data_dir = %dir.root.display(), "created the demo lakehouse")
            }
            InitOutcome::Repaired => {
                tracing::info!(data_dir = %dir.root.display(), "repaired the demo lakehouse")
            }
            _ => {}
        }
    } else if !dir.policy().join("policy.cedar").exists() {
        bail!(
            "parley.toml names catalogs but {} holds no policy yet: run `parley init --data-dir {}` once to write \
             a starter policy and draft contracts for their tables",
            dir.root.display(),
            dir.root.display()
        );
    }
    let policy = Arc::new(
        ReloadablePolicy::load(&dir.policy()).with_context(|| {
            format!(
                "cannot load the policy in {}; fix the file named above (see examples/policy/ for a working set)",
                dir.policy().display()
            )
        })?,
    );
    let identity: Identity = if authenticated {
        Arc::new(Anonymous)
    } else {
        Arc::new(LocalIdentity::new(&config.principal, policy.clone()))
    };
    let audit = Arc::new(FileAuditLog::open_anchored(
        &dir.audit_log(),
        config.audit.rotate_bytes,
        Some(&dir.audit_anchor()),
    )?);
    let opened = parley::catalog::open::open(&config, dir)
        .await
        .context("cannot open the Iceberg catalog")?;
    tracing::info!(
        data_dir = %dir.root.display(),
        principal = %config.principal,
        audit = %audit.path().display(),
        "parley ready"
    );
    check_catalogs(&config, dir, &opened).await;
    if !authenticated && !policy.knows(&config.principal) {
        tracing::warn!(
            principal = %config.principal,
            "the policy's entities.json does not name this principal: it belongs to no group and will \
             discover nothing a policy grants by group"
        );
    }
    let store = Arc::new(
        parley::store::SqliteStore::open(&dir.root.join("state.db"))
            .await
            .context("cannot open the negotiation store")?,
    );
    let purposes = parley::negotiation::Purposes::load(&dir.policy().join("purposes.yaml"))
        .map_err(|e| anyhow::anyhow!("cannot load the purpose registry: {e}"))?;
    let engine = parley::query::Engine::new(&config.query, opened.naming.clone())?
        .with_files_outside_location(
            config
                .catalogs
                .iter()
                .filter_map(|c| Some((c.name.clone(), c.files_outside_location?))),
        );
    let authz = parley::catalog::authz::CatalogAuthz::new(
        &parley::catalog::open::effective(&config, dir),
        &opened.naming,
    );
    let cache_ttl = std::time::Duration::from_millis(config.catalog_cache_ttl_ms);
    let members = parley::catalog::open::effective(&config, dir);
    let app = Arc::new(App {
        discovery: Default::default(),
        grants_hint: parley::server::grants_hint(),
        engine,
        purposes,
        mask_secret: mask_secret(dir)?,
        sessions: Default::default(),
        monitor: Default::default(),
        owners: parley::server::owners_cache(),
        clock: parley::clock::Clock::from_env(),
        store,
        config,
        audit: parley::audit::reader::AuditReader::new(&dir.audit_log()),
        identity,
        gate: Gate::new(policy.clone(), audit),
        lakehouse: Lakehouse::new(opened.catalog, ContractStore::default())
            .with_authz(authz)
            .with_federated(matches!(
                opened.naming,
                parley::catalog::open::Naming::Federated(_)
            ))
            .with_contracts_dir(&dir.contracts())
            .with_contract_cache(&dir.cache().join("validated-contracts"))
            .with_members(members)
            .with_clock(parley::clock::Clock::from_env())
            .with_cache_ttl(cache_ttl),
    });
    // The contracts are read on a thread of their own: `initialize` is answered at once, and a call that needs
    // them waits for this first read.
    let loader = app.clone();
    let runtime = tokio::runtime::Handle::current();
    std::thread::spawn(move || {
        let _runtime = runtime.enter();
        let started = std::time::Instant::now();
        if let Some((loaded, refused)) = loader.lakehouse.ensure_contracts() {
            tracing::info!(
                contracts = loaded,
                refused,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "contracts loaded"
            );
        }
        // Contracts taken unvalidated (a first start) are validated now, all of them, where they are (calls meanwhile
        // share the work), and read back by a reload that remembers them for the next start; refused ones are named,
        // and the sessions of tables whose contract turned out otherwise are told.
        let started = std::time::Instant::now();
        if let Some((loaded, refused, changed)) = loader.lakehouse.validate_presumed_contracts() {
            tracing::info!(
                contracts = loaded,
                refused,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "contracts validated"
            );
            loader.sessions.contracts_changed(&changed);
            loader.refresh_tool_lists();
        }
    });
    // The catalog is listed meanwhile, beside the contracts' read: the first listing waits for both.
    let lister = app.clone();
    tokio::spawn(async move { lister.lakehouse.warm_up().await });
    watch_files(policy, app.clone());
    Ok(app)
}

/// Refuses to read an audit log that is not there: a mistyped `--data-dir` would otherwise print nothing and
/// succeed.
fn require_audit_log(dir: &DataDir) -> Result<()> {
    if !dir.audit_log().exists() {
        bail!(
            "no audit log at {}: is --data-dir (or PARLEY_HOME) the data dir the server uses?",
            dir.audit_log().display()
        );
    }
    Ok(())
}

/// `--http`'s address: an IP address and port. A host name is refused with the address to use instead, so the
/// address served is exactly the one named (and a loopback check means what it says).
fn parse_listen_address(text: &str) -> std::result::Result<SocketAddr, String> {
    text.parse().map_err(|_| match text.rsplit_once(':') {
        Some((host, port)) if host.eq_ignore_ascii_case("localhost") => format!(
            "{text:?} names a host: use an IP address, 127.0.0.1:{port} (or [::1]:{port})"
        ),
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => format!(
            "{text:?} names a host: use an IP address and port, e.g. 127.0.0.1:{port} or 0.0.0.0:{port}"
        ),
        _ => format!("{text:?} is not an address and port, e.g. 127.0.0.1:8765"),
    })
}

/// A `[[catalogs]]` entry from `parley init --catalog` flags, checked as parley.toml's entries are.
fn catalog_from_flags(
    name: &str,
    kind: &str,
    uri: Option<String>,
    properties: &[String],
) -> Result<parley::config::CatalogSettings> {
    let kind = match kind {
        "rest" => parley::config::CatalogKind::Rest,
        "sql" => parley::config::CatalogKind::Sql,
        other => bail!("unknown catalog type {other:?}; use rest or sql"),
    };
    let mut props = std::collections::BTreeMap::new();
    if let Some(uri) = uri {
        props.insert("uri".to_string(), uri);
    }
    for p in properties {
        let Some((key, value)) = p.split_once('=') else {
            bail!("--property {p:?} is not KEY=VALUE (e.g. --property warehouse=analytics)");
        };
        props.insert(key.trim().to_string(), value.to_string());
    }
    let settings = parley::config::CatalogSettings {
        name: name.to_string(),
        kind,
        authorization: None,
        files_outside_location: None,
        properties: props,
    };
    let probe = Config {
        catalogs: vec![settings.clone()],
        ..Config::default()
    };
    probe.check_catalogs().map_err(anyhow::Error::msg)?;
    Ok(settings)
}

/// Appends `settings` as a `[[catalogs]]` entry to the config file at `path` (created if missing), refusing a
/// name the file already uses.
fn add_catalog_to_config(path: &Path, settings: &parley::config::CatalogSettings) -> Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let current: Config = toml::from_str(&existing)
        .with_context(|| format!("{} is not a valid Parley config", path.display()))?;
    if current.catalogs.iter().any(|c| c.name == settings.name) {
        bail!(
            "{} already names a catalog {:?}; edit it there",
            path.display(),
            settings.name
        );
    }
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        catalogs: [&'a parley::config::CatalogSettings; 1],
    }
    let entry = toml::to_string(&Entry {
        catalogs: [settings],
    })?;
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push('\n');
    text.push_str(&entry);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Prints what `parley init` did to an existing lakehouse and what to do next.
fn report_prepared(dir: &DataDir, prepared: parley::init::Prepared) {
    for path in &prepared.policy_files {
        println!("wrote {}", path.display());
    }
    for (table, path) in &prepared.drafted {
        println!("drafted the contract of {table}: {}", path.display());
    }
    for (table, why) in &prepared.unreadable {
        println!("could not read {table} (no draft written): {why}");
    }
    println!(
        "{} tables: {} draft contracts written, {} already had a contract. Next: classify each column in the \
         drafts under {} (and set status: active), check them with `parley contract validate {}`, then run \
         `parley serve --data-dir {}`.",
        prepared.tables,
        prepared.drafted.len(),
        prepared.had_contract,
        dir.contracts().display(),
        dir.contracts().display(),
        dir.root.display()
    );
}

/// Asks each catalog once at start-up, so a lakehouse that will look empty says why in the log: a catalog that
/// cannot be reached or refuses Parley's credentials, one that holds nothing, or an embedded catalog name that
/// matches none of its SQLite file's catalogs. The server starts anyway: a catalog that comes back is served.
async fn check_catalogs(config: &Config, dir: &DataDir, opened: &parley::catalog::open::Opened) {
    for (settings, catalog) in &opened.members {
        match parley::catalog::open::probe(settings, catalog.as_ref()).await {
            Err(e) => tracing::error!("{e}; agents will not see its tables until it answers"),
            Ok(0) => {
                let names = if config.catalogs.is_empty() {
                    parley::catalog::sql_catalog_names(&dir.catalog_db()).await
                } else {
                    Vec::new()
                };
                if names.is_empty() {
                    tracing::warn!(
                        catalog = %settings.name,
                        "the Iceberg catalog holds no namespaces: agents will see no tables from it"
                    );
                } else {
                    tracing::warn!(
                        catalog = %settings.name,
                        found = %names.join(", "),
                        "catalog_name matches no namespace in {}; it holds tables under other catalog names: set \
                         catalog_name in parley.toml to one of them",
                        dir.catalog_db().display()
                    );
                }
            }
            Ok(n) => tracing::info!(catalog = %settings.name, namespaces = n, "catalog answered"),
        }
    }
}

/// How often a watched contract tree is looked at anyway (a watch misses changes on network file systems; a
/// folder replaced whole is noticed at the next 2 s tick and watched anew).
const CONTRACTS_POLL: std::time::Duration = std::time::Duration::from_secs(60);

/// Reloads the policy and the contracts on SIGHUP and when their files change. The policy is looked at every 2 s.
/// The contract tree (up to 100,000 files) is watched: it is looked at ~0.1 s after a change is seen, on SIGHUP,
/// and every [`CONTRACTS_POLL`] in case the watch missed one; where it cannot be watched, every 2 s as the policy
/// (and at most a twentieth of a core, see [`parley::catalog::Lakehouse::reload_contracts`]). A policy reload
/// that fails is logged and the previous policy stays in force; a contract that no longer loads is logged and its
/// table counts as unclassified, as at start-up.
fn watch_files(policy: Arc<ReloadablePolicy>, app: Arc<App>) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        let seen = Arc::new(tokio::sync::Notify::new());
        let watch = || {
            let (app, seen) = (app.clone(), seen.clone());
            // Setting up the watch walks the tree's folders: blocking work.
            tokio::task::spawn_blocking(move || {
                if !app.config.watch_contracts {
                    return None;
                }
                app.lakehouse.watch_contracts(move || seen.notify_one())
            })
        };
        let mut watching = watch().await.ok().flatten();
        let mut polled = std::time::Instant::now();
        loop {
            #[cfg(unix)]
            let forced = tokio::select! {
                _ = tick.tick() => false,
                _ = seen.notified() => {
                    // Several events usually make one edit (truncate, write, rename): look once they are done.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    false
                }
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            #[cfg(not(unix))]
            let forced = tokio::select! {
                _ = tick.tick() => false,
                _ = seen.notified() => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    false
                }
            };
            let result = if forced {
                policy.reload().map(|_| true)
            } else {
                policy.reload_if_changed()
            };
            let mut changed_any = false;
            match result {
                Ok(true) => {
                    tracing::info!("policy reloaded");
                    changed_any = true;
                }
                Ok(false) => {}
                Err(e) => tracing::error!("policy reload failed, keeping the previous policy: {e}"),
            }
            // A contract folder replaced whole (a restore, a deployment swapping folders) is watched anew, which
            // marks the tree for a look.
            if watching.as_ref().is_some_and(|w| w.replaced()) {
                tracing::info!("the contract folder was replaced; watching the new one");
                drop(watching.take());
                watching = watch().await.ok().flatten();
            }
            let look = forced
                || watching.is_none()
                || app.lakehouse.contracts_dirty()
                || polled.elapsed() >= CONTRACTS_POLL;
            if look && !app.lakehouse.contracts_dirty() {
                polled = std::time::Instant::now();
            }
            // Looking at every contract file (0.3 s for 100,000) and reloading them (seconds) is blocking work:
            // on a blocking thread, so the MCP runtime's workers keep answering calls meanwhile.
            let lakehouse = app.clone();
            let reloaded = if look {
                tokio::task::spawn_blocking(move || lakehouse.lakehouse.reload_contracts(forced))
                    .await
                    .unwrap_or_else(|e| {
                        tracing::error!("checking the contract files failed: {e}");
                        None
                    })
            } else {
                None
            };
            if let Some((loaded, refused, changed)) = reloaded {
                changed_any = true;
                // Subscribers of a changed table's `contract://` resource hear that it changed.
                app.sessions.contracts_changed(&changed);
                if refused == 0 {
                    tracing::info!(contracts = loaded, "contracts reloaded");
                } else {
                    tracing::warn!(
                        contracts = loaded,
                        refused,
                        "contracts reloaded; the refused ones (named above) leave their tables unclassified"
                    );
                }
            }
            if changed_any {
                // Who owns a table may have changed: sessions whose tool list no longer fits are told.
                app.refresh_tool_lists();
            }
        }
    });
}

fn load_policy(dir: &Path) -> Result<CedarPolicy> {
    CedarPolicy::load(dir).with_context(|| {
        format!(
            "cannot load the policy in {}; fix the file named above (see examples/policy/ for a working set)",
            dir.display()
        )
    })
}

/// Stdin and stdout as non-blocking pipes driven by the reactor, when both are pipes (as an MCP client that spawns
/// the server sets them up). Tokio's `stdin()`/`stdout()` hand every read and write to a blocking thread, which on a
/// small machine costs each tool call two thread wake-ups; a terminal, file or socket keeps that path.
#[cfg(unix)]
fn stdio_pipes() -> Option<(
    tokio::net::unix::pipe::Receiver,
    tokio::net::unix::pipe::Sender,
)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    // Both are checked before either is made non-blocking, so a failure leaves tokio's blocking path intact.
    let pipe = |fd: std::os::fd::BorrowedFd<'_>| {
        let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
        file.metadata().ok()?.file_type().is_fifo().then_some(file)
    };
    let (input, output) = (
        pipe(std::io::stdin().as_fd())?,
        pipe(std::io::stdout().as_fd())?,
    );
    let input = tokio::net::unix::pipe::Receiver::from_file(input).ok()?;
    let output = tokio::net::unix::pipe::Sender::from_file(output).ok()?;
    Some((input, output))
}

#[cfg(not(unix))]
fn stdio_pipes() -> Option<(tokio::io::Stdin, tokio::io::Stdout)> {
    None
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
    use std::io::IsTerminal as _;
    if std::io::stdin().is_terminal() {
        // Someone ran `parley serve` by hand: nothing will happen until an MCP client speaks on stdin.
        eprintln!(
            "parley is waiting for an MCP client on stdin (JSON-RPC, one message per line). Connect a client \
             instead of typing: e.g. `claude mcp add parley -- parley serve`, the MCP Inspector \
             (`npx @modelcontextprotocol/inspector parley serve`), or serve HTTP with \
             `parley serve --http 127.0.0.1:8765 --principal analyst`. Ctrl-C stops it."
        );
    }
    let server = ParleyServer::new(app.clone());
    // Parley's own line framing, so a line that does not parse is answered rather than dropped.
    let service = match stdio_pipes() {
        Some((input, output)) => server.serve(LineTransport::new(input, output)).await,
        None => {
            server
                .serve(LineTransport::new(tokio::io::stdin(), tokio::io::stdout()))
                .await
        }
    }
    .context("MCP initialization over stdio failed")?;
    let ct = service.cancellation_token();
    let ended = tokio::select! {
        r = service.waiting() => r.map(drop),
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            ct.cancel();
            Ok(())
        }
    };
    settle(&app).await;
    ended?;
    Ok(())
}

/// Lets the calls still running when the transport ended finish and write their audit records (see
/// `Gate::settle`), at most `SETTLE_WITHIN`.
async fn settle(app: &App) {
    const SETTLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);
    if !app.gate.settle(SETTLE_WITHIN).await {
        tracing::error!(
            "calls still running {} s after the transport ended are cut off; their audit records may be missing",
            SETTLE_WITHIN.as_secs()
        );
    }
}

async fn serve_http(
    app: Arc<App>,
    addr: SocketAddr,
    validator: Option<JwtValidator>,
) -> Result<()> {
    let ct = CancellationToken::new();
    // DNS-rebinding protection for a loopback server; a server bound elsewhere is reached by names we cannot
    // know and relies on its bearer tokens.
    // A loopback server also refuses requests a web page of another origin makes (a browser sends its `Origin`;
    // clients that are no browser send none).
    let http_config = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(parley::http::MAX_BODY_BYTES);
    let http_config = if addr.ip().is_loopback() {
        http_config
            .with_allowed_hosts([
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
                addr.ip().to_string(),
            ])
            .with_allowed_origins([
                "http://localhost:*",
                "http://127.0.0.1:*",
                "http://[::1]:*",
                "https://localhost:*",
            ])
    } else {
        http_config.disable_allowed_hosts()
    };
    let subject_tokens = app.lakehouse.authz().subject_tokens();
    let iceberg = parley::server::iceberg_router(app.clone());
    let sessions = Arc::new(LocalSessionManager::default());
    let served = app.clone();
    let service = StreamableHttpService::new(
        move || Ok(ParleyServer::new(served.clone())),
        sessions.clone(),
        http_config.with_cancellation_token(ct.child_token()),
    );
    // Sessions dropped past the limits are closed in the MCP layer too, so they free what they hold.
    let closing = sessions.clone();
    let close: parley::http::CloseSession = Arc::new(move |ids: Vec<String>| {
        use rmcp::transport::streamable_http_server::session::SessionManager as _;
        let sessions = closing.clone();
        tokio::spawn(async move {
            for id in ids {
                let _ = sessions.close_session(&Arc::from(id)).await;
            }
        });
    });
    // A call whose HTTP client closed its request is cancelled as the client's `notifications/cancelled` would.
    let cancel: parley::http::CancelCall =
        Arc::new(move |session: String, id: serde_json::Value| {
            use rmcp::transport::streamable_http_server::session::SessionManager as _;
            let message = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": id, "reason": "the client closed the request"}});
            let Ok(message) = serde_json::from_value::<rmcp::model::ClientJsonRpcMessage>(message)
            else {
                return;
            };
            // Called from a dropped stream, which may be dropped as the runtime shuts down.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let sessions = sessions.clone();
            runtime.spawn(async move {
                let _ = sessions.accept_message(&Arc::from(session), message).await;
            });
        });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let resource = format!("http://{}/mcp", listener.local_addr()?);
    let router = match validator {
        Some(validator) => {
            let auth = Arc::new(
                HttpAuth::new(validator, &resource)
                    .with_limits(&app.config.http)
                    .with_subject_tokens(subject_tokens)
                    .with_session_closer(close),
            );
            parley::http::router(service, auth.clone(), cancel)
                .merge(parley::http::protect_iceberg(iceberg, auth))
        }
        None => parley::http::local_router(service, cancel, close, &app.config.http),
    };
    tracing::info!(url = %format!("http://{}/mcp", listener.local_addr()?), "serving MCP over streamable HTTP");
    parley::http::serve(
        listener,
        router,
        app.config.http.max_connections,
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            ct.cancel();
        },
    )
    .await?;
    settle(&app).await;
    Ok(())
}
