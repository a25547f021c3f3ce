//! Gate: the one choke point every tool call and resource read passes through.
//!
//! [`Gate::run`] resolves nothing on its own but fixes the order: the body asks for decisions through the
//! [`Checked`] handle (each one recorded), acts, and returns; the gate then writes exactly one audit record —
//! allowed, denied or error — and only once that record is durable does the caller get the answer.
//!
//! Invariants: no tool calls `policy` or `audit` except through this module; a result whose audit record could
//! not be written is never returned; a table the caller may not discover is reported exactly like a table that
//! does not exist.

use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;

use crate::audit::{AuditEntry, AuditResource, AuditSink};
use crate::identity::Principal;
use crate::policy::{
    Action, Decision, GrantContext, PolicyBackend, RequestContext, Resource, TableFacts,
};

/// Why a tool call did not produce a result, in words the agent can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// No such table — or one the caller may not discover (indistinguishable on purpose).
    #[error(
        "table {table} not found. Call list_tables to see the tables you can use; names are namespace.table."
    )]
    TableNotFound {
        /// The name as the caller wrote it.
        table: String,
    },
    /// The policy denies the action.
    #[error("access denied: {reason}. {next_step}")]
    Denied {
        /// The policy's reason.
        reason: String,
        /// What the agent can do about it.
        next_step: String,
    },
    /// The request itself is wrong (bad SQL, bad argument).
    #[error("{0}")]
    BadRequest(String),
    /// The change conflicts with what the table promises or with its current state (a commit).
    #[error("{0}")]
    Conflict(String),
    /// A limit (time, memory, size) stopped the call.
    #[error("{0}")]
    Limit(String),
    /// The caller cancelled the call.
    #[error("the call was cancelled by the client")]
    Cancelled,
    /// The server failed; not the agent's fault.
    #[error("internal error: {0}. This is a server problem; retrying later may help.")]
    Internal(String),
}

impl ToolError {
    fn decision(&self) -> &'static str {
        match self {
            ToolError::TableNotFound { .. } | ToolError::Denied { .. } | ToolError::Conflict(_) => {
                "denied"
            }
            _ => "error",
        }
    }
}

/// What the body of a call tells the audit record, besides decisions.
#[derive(Debug, Default)]
pub struct Usage {
    /// SQL text of a query.
    pub sql: Option<String>,
    /// Snapshots read (`ns.table@id`).
    pub snapshots: Vec<String>,
    /// Rows returned.
    pub rows: Option<u64>,
    /// Bytes returned.
    pub bytes: Option<u64>,
}

/// The body's handle on one call: principal, decisions taken so far, usage to record.
pub struct Checked<'a> {
    gate: &'a Gate,
    principal: &'a Principal,
    context: RequestContext,
    action: Option<Action>,
    resources: Vec<String>,
    reasons: Vec<String>,
    policy_ids: Vec<String>,
    /// Usage figures the body fills in for the audit record.
    pub usage: Usage,
    /// The call's tool (or MCP method) and when it started, for its record.
    tool: &'a str,
    started: Instant,
    /// Whether the call's record was made; a call dropped before that (cancelled, or its client gone) is
    /// recorded when its handle drops.
    recorded: bool,
}

impl Checked<'_> {
    /// The call's audit record as it stands.
    fn entry(&mut self, decision: &str, reason: String, error: Option<String>) -> AuditEntry {
        let usage = std::mem::take(&mut self.usage);
        AuditEntry {
            principal: self.principal.id.clone(),
            tool: self.tool.to_string(),
            action: self.action.map(|a| a.as_str().to_string()),
            resource: AuditResource::of(&self.resources),
            decision: decision.to_string(),
            reason,
            policy_ids: self.policy_ids.clone(),
            purpose: self.context.purpose.clone(),
            sql_digest: usage.sql.as_deref().map(crate::audit::digest),
            sql: usage.sql,
            snapshots: usage.snapshots,
            rows: usage.rows,
            bytes: usage.bytes,
            duration_ms: self.started.elapsed().as_millis() as u64,
            error,
        }
    }
}

/// A call whose future was dropped before its record was made — the client cancelled it, went away, or closed
/// its session while the call waited (an outside test found a `request_access` that had stored a request leave
/// no record when its client never answered the question it asked) — is recorded here, with what it had noted:
/// as an error, without a reply, appended in the background (no result goes out, so none waits for it).
impl Drop for Checked<'_> {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        let mut did = self.reasons.join("; ");
        if did.is_empty() {
            did = "nothing noted".to_string();
        }
        let entry = self.entry(
            "error",
            format!("the call ended before it finished (cancelled, or its client went away); it had: {did}"),
            Some("cancelled".to_string()),
        );
        let audit = self.gate.audit.clone();
        // Counted as running until written, so a server that stops waits for it too.
        let running = InFlight::enter(&self.gate.in_flight);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _running = running;
                    if let Err(e) = audit.append(entry).await {
                        tracing::error!(
                            "the audit record of a cancelled call could not be written: {e}"
                        );
                    }
                });
            }
            Err(_) => tracing::error!(
                principal = %entry.principal,
                tool = %entry.tool,
                "a call ended outside a runtime; its audit record could not be written: {}",
                entry.reason
            ),
        }
    }
}

impl Checked<'_> {
    /// The caller's principal id.
    pub fn principal_id(&self) -> &str {
        &self.principal.id
    }

    /// Whether the caller is a stranger to the policy: not in its entities, and no groups from its token.
    pub fn principal_unknown(&self) -> bool {
        self.principal.groups.is_empty() && !self.gate.policy.knows(&self.principal.id)
    }

    /// The caller's principal (id and groups).
    pub fn principal(&self) -> &Principal {
        self.principal
    }

    /// The purpose the caller stated for this call, if any.
    pub fn purpose(&self) -> Option<&str> {
        self.context.purpose.as_deref()
    }

    /// The version of the policy deciding this call (see [`PolicyBackend::version`]).
    pub fn policy_version(&self) -> u64 {
        self.gate.policy.version()
    }

    /// [`Checked::peek`] for work that outlives the call (a discovery index decided in the background): an owned
    /// handle deciding for this caller and context; it records nothing.
    pub fn peeker(&self) -> Peeker {
        Peeker {
            policy: self.gate.policy.clone(),
            principal: self.principal.clone(),
            context: self.context.clone(),
        }
    }

    /// Asks the policy without recording it as the call's decision (for filtering lists).
    pub fn peek(&self, action: Action, resource: &Resource) -> Decision {
        self.gate
            .policy
            .authorize(self.principal, action, resource, &self.context)
    }

    fn record(&mut self, action: Action, resource: &Resource, decision: &Decision) {
        self.action = Some(action);
        let name = resource.display();
        if !self.resources.contains(&name) {
            self.resources.push(name);
        }
        self.reasons.push(decision.reason().to_string());
        for id in decision.policy_ids() {
            if !self.policy_ids.contains(id) {
                self.policy_ids.push(id.clone());
            }
        }
    }

    /// Names `resource` in the call's audit record without a decision: a query names every table its SQL names,
    /// even when it fails on the first, because the record carries the SQL (and who may read the record depends
    /// on every table it names).
    pub fn name_resource(&mut self, resource: &str) {
        if !self.resources.iter().any(|r| r == resource) {
            self.resources.push(resource.to_string());
        }
    }

    /// Records a step that needed no single policy decision (e.g. rows filtered per record by policy).
    pub fn note(&mut self, action: Action, resource: &str, reason: String) {
        self.action = Some(action);
        if !self.resources.iter().any(|r| r == resource) {
            self.resources.push(resource.to_string());
        }
        self.reasons.push(reason);
    }

    /// Requires `action` on `resource`; records the decision and fails with [`ToolError::Denied`] if denied.
    pub fn require(
        &mut self,
        action: Action,
        resource: &Resource,
        next_step: &str,
    ) -> Result<Decision, ToolError> {
        let decision = self.peek(action, resource);
        self.record(action, resource, &decision);
        if decision.allowed() {
            Ok(decision)
        } else {
            Err(ToolError::Denied {
                reason: decision.reason().to_string(),
                next_step: next_step.to_string(),
            })
        }
    }

    /// Decides `action` on `resource` as if the call ran under `grant` (for `request_access`, which offers only
    /// terms a query could then use); records nothing.
    pub fn peek_under(&self, action: Action, resource: &Resource, grant: GrantContext) -> Decision {
        let context = RequestContext {
            grant: Some(grant),
            ..self.context.clone()
        };
        self.gate
            .policy
            .authorize(self.principal, action, resource, &context)
    }

    /// [`Checked::peek_under`] as the policy applies to `principal` instead of the caller (an approver's changed
    /// terms are checked for the requester who will use them); records nothing.
    pub fn peek_under_as(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource,
        grant: GrantContext,
    ) -> Decision {
        let context = RequestContext {
            grant: Some(grant),
            ..self.context.clone()
        };
        self.gate
            .policy
            .authorize(principal, action, resource, &context)
    }

    /// [`Checked::require_table`] for an action under a grant: discovery is decided as usual, then `action` with
    /// the grant's terms for this table in `context.grant`. A grant is never a way around the policy: a forbid
    /// still wins, and some permit must allow the action under the grant.
    pub fn require_table_under(
        &mut self,
        name: &str,
        facts: Option<TableFacts>,
        action: Action,
        next_step: &str,
        grant: GrantContext,
    ) -> Result<TableFacts, ToolError> {
        let facts = self.require_table(name, facts, Action::Discover, next_step)?;
        let resource = Resource::Table(facts);
        let outer = self.context.grant.replace(grant);
        let decided = self.require(action, &resource, next_step);
        self.context.grant = outer;
        decided?;
        let Resource::Table(facts) = resource else {
            unreachable!("built as a table above")
        };
        Ok(facts)
    }

    /// Requires `action` on a table looked up by `name`: a missing table and one the caller may not discover
    /// both fail with the same [`ToolError::TableNotFound`]; a discoverable table without `action` is denied.
    pub fn require_table(
        &mut self,
        name: &str,
        facts: Option<TableFacts>,
        action: Action,
        next_step: &str,
    ) -> Result<TableFacts, ToolError> {
        let not_found = || ToolError::TableNotFound {
            table: name.to_string(),
        };
        let Some(facts) = facts else {
            self.action = Some(action);
            self.name_resource(name);
            self.reasons.push("no such table".to_string());
            return Err(not_found());
        };
        let resource = Resource::Table(facts);
        let discover = self.peek(Action::Discover, &resource);
        if !discover.allowed() {
            self.record(action, &resource, &discover);
            return Err(not_found());
        }
        if action != Action::Discover {
            self.require(action, &resource, next_step)?;
        } else {
            self.record(action, &resource, &discover);
        }
        let Resource::Table(facts) = resource else {
            unreachable!("built as a table above")
        };
        Ok(facts)
    }
}

/// See [`Checked::peeker`].
#[derive(Clone)]
pub struct Peeker {
    policy: Arc<dyn PolicyBackend>,
    principal: Principal,
    context: RequestContext,
}

impl Peeker {
    /// Asks the policy as [`Checked::peek`] does.
    pub fn peek(&self, action: Action, resource: &Resource) -> Decision {
        self.policy
            .authorize(&self.principal, action, resource, &self.context)
    }

    /// The principal it decides for.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
}

/// The choke point: policy + audit around every call.
pub struct Gate {
    policy: Arc<dyn PolicyBackend>,
    audit: Arc<dyn AuditSink>,
    /// Calls running now, so a server that stops can let them finish and write their records
    /// ([`Gate::settle`]).
    in_flight: Arc<tokio::sync::watch::Sender<usize>>,
}

/// Counts one call (or the late record of a dropped one) in [`Gate::in_flight`] while it lives, however it ends.
struct InFlight(Arc<tokio::sync::watch::Sender<usize>>);

impl InFlight {
    fn enter(count: &Arc<tokio::sync::watch::Sender<usize>>) -> InFlight {
        count.send_modify(|n| *n += 1);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Gate {
    /// A gate over a policy backend and an audit sink.
    pub fn new(policy: Arc<dyn PolicyBackend>, audit: Arc<dyn AuditSink>) -> Gate {
        Gate {
            policy,
            audit,
            in_flight: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Waits, at most `within`, until no call is running: a server stopping (its client gone, a signal) lets the
    /// calls its transport ended — a question that will get no answer, a query — finish and make their records
    /// durable before the process exits (an outside test found a call whose client closed stdin left no record).
    /// Whether every call finished.
    pub async fn settle(&self, within: std::time::Duration) -> bool {
        let mut count = self.in_flight.subscribe();
        tokio::time::timeout(within, count.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The version of the policy in force.
    pub fn policy_version(&self) -> u64 {
        self.policy.version()
    }

    /// Whether the policy allows `principal` `action` on `resource` — for addressing notices (who owns a table),
    /// never for deciding a call, which goes through [`Gate::run`].
    pub fn may(&self, principal: &Principal, action: Action, resource: &Resource) -> bool {
        self.policy
            .authorize(principal, action, resource, &RequestContext::default())
            .allowed()
    }

    /// Runs one call: `body` decides (through [`Checked`]) and acts; then one audit record is made durable;
    /// then the result (or the agent-facing error text) is returned.
    pub async fn run<T>(
        &self,
        principal: &Principal,
        tool: &str,
        purpose: Option<String>,
        body: impl AsyncFnOnce(&mut Checked<'_>) -> Result<T, ToolError>,
    ) -> Result<T, String> {
        self.run_rendered(principal, tool, purpose, body, |t| t)
            .await
    }

    /// [`Gate::run`], with `render` turning the body's result into the reply while the audit record is being
    /// made durable: the rendering overlaps the fsync, and the reply is still returned only once the record is
    /// durable (and withheld if it cannot be written).
    pub async fn run_rendered<T, R>(
        &self,
        principal: &Principal,
        tool: &str,
        purpose: Option<String>,
        body: impl AsyncFnOnce(&mut Checked<'_>) -> Result<T, ToolError>,
        render: impl FnOnce(T) -> R,
    ) -> Result<R, String> {
        let _running = InFlight::enter(&self.in_flight);
        let mut checked = Checked {
            gate: self,
            principal,
            context: RequestContext {
                purpose: purpose.clone(),
                grant: None,
            },
            action: None,
            resources: vec![],
            reasons: vec![],
            policy_ids: vec![],
            usage: Usage::default(),
            tool,
            started: Instant::now(),
            recorded: false,
        };
        // A body that panics (a bug) is a failed call like any other: audited and answered, never a request left
        // without an answer or a record (an outside test found one). What it panicked with stays in the log.
        let result = match std::panic::AssertUnwindSafe(body(&mut checked))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(tool, "the call panicked: {what}");
                Err(ToolError::Internal(
                    "the server failed on this call (a bug, logged for the operator); nothing was changed by \
                     it beyond what its audit record says. Retry, or report it if it repeats"
                        .into(),
                ))
            }
        };
        let (decision, reason, error) = match &result {
            Ok(_) => (
                "allowed",
                if checked.reasons.is_empty() {
                    "no policy decision needed".to_string()
                } else {
                    checked.reasons.join("; ")
                },
                None,
            ),
            Err(e) => (
                e.decision(),
                checked
                    .reasons
                    .last()
                    .cloned()
                    .unwrap_or_else(|| e.to_string()),
                Some(e.to_string()),
            ),
        };
        let entry = checked.entry(decision, reason, error);
        checked.recorded = true;
        drop(checked);
        // Biased: the append is polled first, so the record is on its way to the writer before rendering starts.
        let (audited, reply) = tokio::join!(biased; self.audit.append(entry), async move {
            result.map(render).map_err(|e| e.to_string())
        });
        if let Err(e) = audited {
            tracing::error!("audit append failed, withholding the result: {e}");
            return Err(
                "the call's audit record could not be written, so its result is withheld. This is a server \
                 problem; retry later."
                    .to_string(),
            );
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::audit::AuditError;
    use crate::policy::CedarPolicy;

    /// An audit sink whose appends finish only when the test says so, and then fail or succeed as told.
    struct HeldSink {
        release: tokio::sync::Semaphore,
        fail: bool,
    }

    #[async_trait::async_trait]
    impl AuditSink for HeldSink {
        async fn append(&self, _entry: AuditEntry) -> Result<u64, AuditError> {
            let _permit = self.release.acquire().await.expect("semaphore open");
            if self.fail {
                return Err(AuditError::Io {
                    path: PathBuf::from("audit.jsonl"),
                    source: std::io::Error::other("disk full"),
                });
            }
            Ok(1)
        }
    }

    fn gate(fail: bool) -> (Gate, Arc<HeldSink>) {
        let policy = CedarPolicy::from_texts(
            include_str!("../examples/policy/policy.cedar"),
            Path::new("policy.cedar"),
            include_str!("../examples/policy/entities.json"),
            Path::new("entities.json"),
        )
        .expect("demo policy loads");
        let sink = Arc::new(HeldSink {
            release: tokio::sync::Semaphore::new(0),
            fail,
        });
        (Gate::new(Arc::new(policy), sink.clone()), sink)
    }

    /// An audit sink that keeps what it is given.
    #[derive(Default)]
    struct Kept(std::sync::Mutex<Vec<AuditEntry>>);

    #[async_trait::async_trait]
    impl AuditSink for Kept {
        async fn append(&self, entry: AuditEntry) -> Result<u64, AuditError> {
            let mut kept = self.0.lock().unwrap();
            kept.push(entry);
            Ok(kept.len() as u64)
        }
    }

    /// A body that panics is answered with an error and audited as one, saying nothing of what it panicked with.
    #[tokio::test]
    async fn a_call_that_panics_is_answered_and_audited() {
        let (gate, _) = gate(false);
        let kept = Arc::new(Kept::default());
        let gate = Gate::new(gate.policy.clone(), kept.clone());
        let principal = Principal::new("sales-owner", vec![]);
        let answer: Result<u8, String> = gate
            .run(&principal, "publish_contract", None, async |c| {
                c.note(Action::DecideRequest, "sales.orders", "publishing".into());
                let days: i64 = std::hint::black_box(i64::MAX);
                Ok(u8::from(
                    chrono::TimeDelta::days(days) > chrono::TimeDelta::zero(),
                ))
            })
            .await;
        let e = answer.unwrap_err();
        assert!(e.contains("a bug") && !e.contains("out of bounds"), "{e}");
        let kept = kept.0.lock().unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].decision, "error");
        assert_eq!(kept[0].tool, "publish_contract");
        assert!(
            !kept[0]
                .error
                .as_deref()
                .unwrap_or("")
                .contains("out of bounds")
        );
    }

    /// A call dropped before it finished (its client went away) is audited with what it had noted; one that
    /// finished is audited once.
    #[tokio::test]
    async fn a_call_dropped_before_it_finishes_is_audited() {
        let (gate, _) = gate(false);
        let kept = Arc::new(Kept::default());
        let gate = Gate::new(gate.policy.clone(), kept.clone());
        let principal = Principal::new("analyst", vec![]);
        let call = gate.run(
            &principal,
            "request_access",
            Some("churn_analysis".into()),
            async |c| -> Result<(), ToolError> {
                c.note(
                    Action::RequestAccess,
                    "sales.orders",
                    "request req-1 stored".into(),
                );
                std::future::pending().await
            },
        );
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), call)
                .await
                .is_err()
        );
        // Its late record counts as running: settling waits for it.
        assert!(gate.settle(std::time::Duration::from_secs(5)).await);
        assert_eq!(
            kept.0.lock().unwrap().len(),
            1,
            "the dropped call is audited"
        );
        let finished: Result<(), String> = gate
            .run(&principal, "list_tables", None, async |_| Ok(()))
            .await;
        assert!(finished.is_ok());
        let kept = kept.0.lock().unwrap();
        assert_eq!(
            kept.len(),
            2,
            "{:?}",
            kept.iter().map(|e| &e.tool).collect::<Vec<_>>()
        );
        let dropped = &kept[0];
        assert_eq!(
            (
                dropped.tool.as_str(),
                dropped.decision.as_str(),
                dropped.error.as_deref()
            ),
            ("request_access", "error", Some("cancelled"))
        );
        assert!(
            dropped.reason.contains("request req-1 stored"),
            "{}",
            dropped.reason
        );
        assert_eq!(dropped.purpose.as_deref(), Some("churn_analysis"));
        assert_eq!(
            dropped.resource,
            AuditResource::of(&["sales.orders".to_string()])
        );
        assert_eq!(kept[1].decision, "allowed");
    }

    #[tokio::test]
    async fn a_reply_is_rendered_while_its_record_is_written_and_returned_only_after() {
        let (gate, sink) = gate(false);
        let gate = Arc::new(gate);
        let rendered = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (gate, rendered) = (gate.clone(), rendered.clone());
            async move {
                let principal = Principal::new("analyst", vec![]);
                gate.run_rendered(
                    &principal,
                    "list_tables",
                    None,
                    async |_| Ok(41),
                    |n| {
                        rendered.store(true, Ordering::SeqCst);
                        n + 1
                    },
                )
                .await
            }
        });
        // The reply is rendered while the record is still being written...
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !rendered.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the reply was never rendered");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // ...but not returned until the record is durable.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !task.is_finished(),
            "the reply came before its audit record"
        );
        sink.release.add_permits(1);
        assert_eq!(task.await.unwrap(), Ok(42));
    }

    #[tokio::test]
    async fn a_reply_is_withheld_when_its_record_cannot_be_written() {
        let (gate, sink) = gate(true);
        sink.release.add_permits(1);
        let principal = Principal::new("analyst", vec![]);
        let reply = gate
            .run_rendered(
                &principal,
                "query",
                None,
                async |_| Ok("secret rows"),
                |rows| rows.to_string(),
            )
            .await;
        let err = reply.expect_err("no reply without an audit record");
        assert!(err.contains("withheld"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
