//! Push notices: the live MCP sessions of each principal, so that an owner's decision on a request, or a
//! revocation, reaches the requester's connected sessions at once — besides the `my_notices` inbox, which stays
//! the record.
//!
//! A session (one [`ParleyServer`](super::ParleyServer) per MCP session) is remembered under its principal when it
//! initializes or first calls; closed ones are forgotten when found closed. Sessions on the 2025 protocols get a
//! `notifications/message` (level `notice`, logger `parley.negotiation`, data = the notice) unless they set a
//! stricter level, and a `notifications/resources/updated` for the notice's `request://` or `grant://` resource
//! when they subscribed to it; clients on 2026-07-28 (which has no logging and no unsolicited notifications) get
//! the resource update through `subscriptions/listen`.
//!
//! Invariants: pushing never blocks or fails the decision that caused it — it runs on its own task and a failed
//! send only drops the session from the registry (logged at debug); a principal's notices go only to that
//! principal's sessions. Push reaches the sessions of this server process; other replicas' sessions see the
//! inbox.

#![allow(deprecated)] // MCP logging is deprecated by SEP-2577 but is what 2025-protocol clients display.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rmcp::model::{
    LoggingLevel, LoggingMessageNotificationParam, ResourceUpdatedNotificationParam,
};
use rmcp::service::SubscriptionSink;
use rmcp::{Peer, RoleServer};
use serde_json::Value;

/// The logger name on notices sent as log messages.
pub(super) const LOGGER: &str = "parley.negotiation";
/// Most resource subscriptions one session may hold.
const MAX_SUBSCRIPTIONS: usize = 1000;

fn rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One MCP session's side of push: its peer once known, its resource subscriptions and its log level.
#[derive(Default)]
pub(super) struct Session {
    peer: OnceLock<Peer<RoleServer>>,
    subscriptions: Mutex<BTreeSet<String>>,
    level: Mutex<Option<LoggingLevel>>,
    /// Whether the session's last `tools/list` included the owners' tools.
    listed_owner: Mutex<Option<bool>>,
}

impl Session {
    /// Records what the session's tool list was last built for.
    pub(super) fn listed_as_owner(&self, owner: bool) {
        *lock(&self.listed_owner) = Some(owner);
    }

    /// Records `logging/setLevel`.
    pub(super) fn set_level(&self, level: LoggingLevel) {
        *lock(&self.level) = Some(level);
    }

    /// Records `resources/subscribe`; false when the session already holds the most subscriptions allowed.
    pub(super) fn subscribe(&self, uri: &str) -> bool {
        let mut subs = lock(&self.subscriptions);
        if subs.len() >= MAX_SUBSCRIPTIONS && !subs.contains(uri) {
            return false;
        }
        subs.insert(uri.to_string());
        true
    }

    /// Records `resources/unsubscribe`.
    pub(super) fn unsubscribe(&self, uri: &str) {
        lock(&self.subscriptions).remove(uri);
    }

    fn wants_log(&self, level: LoggingLevel) -> bool {
        lock(&self.level).is_none_or(|min| rank(level) >= rank(min))
    }

    fn subscribed(&self, uri: &str) -> bool {
        lock(&self.subscriptions).contains(uri)
    }

    fn closed(&self) -> bool {
        self.peer.get().is_some_and(|p| p.is_transport_closed())
    }
}

/// Where a principal's notices can be pushed.
#[derive(Clone)]
enum Channel {
    /// A session on a 2025 protocol.
    Session(Arc<Session>),
    /// A 2026-07-28 `subscriptions/listen` stream, with the id it was registered under.
    Listen(u64, SubscriptionSink),
}

impl Channel {
    fn closed(&self) -> bool {
        match self {
            Channel::Session(s) => s.closed(),
            Channel::Listen(..) => false,
        }
    }

    fn same(&self, other: &Channel) -> bool {
        match (self, other) {
            (Channel::Session(a), Channel::Session(b)) => Arc::ptr_eq(a, b),
            (Channel::Listen(a, _), Channel::Listen(b, _)) => a == b,
            _ => false,
        }
    }
}

/// A notice for one principal: what happened (the same JSON `my_notices` shows, plus ids) and the resource it
/// changed.
pub(super) struct Notice {
    /// Whose request or grant it is.
    pub principal: String,
    /// `request://{id}` or `grant://{id}`.
    pub resource: String,
    /// The notice itself.
    pub data: Value,
}

/// The registry of live sessions per principal, shared by all sessions of the server.
#[derive(Default, Clone)]
pub struct Sessions {
    by_principal: Arc<Mutex<HashMap<String, Vec<Channel>>>>,
    /// Who each attached principal is (groups, attributes), for notices addressed to a role, e.g. a table's
    /// owners.
    who: Arc<Mutex<HashMap<String, crate::identity::Principal>>>,
    next_listen: Arc<AtomicU64>,
}

impl Sessions {
    /// Remembers `session` (talking through `peer`) as one of `principal`'s live sessions; once per session.
    pub(super) fn attach(
        &self,
        principal: &crate::identity::Principal,
        session: &Arc<Session>,
        peer: &Peer<RoleServer>,
    ) {
        if session.peer.set(peer.clone()).is_err() {
            return;
        }
        lock(&self.who).insert(principal.id.clone(), principal.clone());
        let mut map = lock(&self.by_principal);
        let list = map.entry(principal.id.clone()).or_default();
        list.retain(|c| !c.closed());
        list.push(Channel::Session(session.clone()));
    }

    /// Registers a `subscriptions/listen` stream of `principal`; returns the id to [`Sessions::detach_listen`] it
    /// with when the stream ends.
    pub(super) fn attach_listen(&self, principal: &str, sink: SubscriptionSink) -> u64 {
        let id = self.next_listen.fetch_add(1, Ordering::Relaxed);
        let mut map = lock(&self.by_principal);
        let list = map.entry(principal.to_string()).or_default();
        list.retain(|c| !c.closed());
        list.push(Channel::Listen(id, sink));
        id
    }

    /// Forgets a `subscriptions/listen` stream.
    pub(super) fn detach_listen(&self, principal: &str, id: u64) {
        self.forget(
            principal,
            |c| matches!(c, Channel::Listen(i, _) if *i == id),
        );
    }

    fn forget(&self, principal: &str, gone: impl Fn(&Channel) -> bool) {
        let mut map = lock(&self.by_principal);
        if let Some(list) = map.get_mut(principal) {
            list.retain(|c| !gone(c));
            if list.is_empty() {
                map.remove(principal);
            }
        }
    }

    /// Tells each live session whose last tool list no longer fits its principal (`owns` a table or not, after a
    /// policy or contract change) that its tools changed (`notifications/tools/list_changed`), on a task of its
    /// own. Returns the principals for whom `owns` did not know yet (their sessions are left as they are).
    pub fn refresh_tool_lists(
        &self,
        owns: impl Fn(&crate::identity::Principal) -> Option<bool>,
    ) -> Vec<crate::identity::Principal> {
        let mut stale = Vec::new();
        let mut unknown = Vec::new();
        for principal in self.connected() {
            let Some(owner) = owns(&principal) else {
                unknown.push(principal);
                continue;
            };
            if let Some(list) = lock(&self.by_principal).get(&principal.id) {
                for c in list {
                    if let Channel::Session(s) = c
                        && lock(&s.listed_owner).is_some_and(|listed| listed != owner)
                        && let Some(peer) = s.peer.get()
                    {
                        *lock(&s.listed_owner) = None;
                        stale.push(peer.clone());
                    }
                }
            }
        }
        if stale.is_empty() {
            return unknown;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return unknown;
        };
        runtime.spawn(async move {
            for peer in stale {
                if let Err(e) = peer.notify_tool_list_changed().await {
                    tracing::debug!("a session could not take tools/list_changed: {e}");
                }
            }
        });
        unknown
    }

    /// The principals with a live session, as they were when they attached.
    pub fn connected(&self) -> Vec<crate::identity::Principal> {
        let live: Vec<String> = lock(&self.by_principal)
            .iter()
            .filter(|(_, list)| list.iter().any(|c| !c.closed()))
            .map(|(p, _)| p.clone())
            .collect();
        let mut who = lock(&self.who);
        who.retain(|id, _| live.contains(id));
        who.values().cloned().collect()
    }

    /// How many live channels `principal` has (for tests and logs).
    pub fn live(&self, principal: &str) -> usize {
        lock(&self.by_principal)
            .get(principal)
            .map_or(0, |l| l.iter().filter(|c| !c.closed()).count())
    }

    /// Sends `notice` to every live channel of its principal, on a task of its own: the caller never waits and
    /// never sees a failure.
    pub(super) fn push(&self, notice: Notice) {
        let channels: Vec<Channel> = lock(&self.by_principal)
            .get(&notice.principal)
            .map(|l| l.iter().filter(|c| !c.closed()).cloned().collect())
            .unwrap_or_default();
        if channels.is_empty() {
            return;
        }
        let registry = self.clone();
        tokio::spawn(async move {
            for channel in channels {
                if let Err(e) = send(&channel, &notice).await {
                    tracing::debug!(principal = %notice.principal, "dropping a session that could not take a notice: {e}");
                    registry.forget(&notice.principal, |c| c.same(&channel));
                }
            }
        });
    }
}

impl Sessions {
    /// Tells every session subscribed to the `contract://` resource of one of `tables` that it changed (a new
    /// or edited contract version), on a task of its own.
    pub fn contracts_changed(&self, tables: &[crate::catalog::TableName]) {
        if tables.is_empty() {
            return;
        }
        let uris: BTreeSet<String> = tables
            .iter()
            .map(|t| {
                format!(
                    "{}{}/{}",
                    super::resources::CONTRACT_SCHEME,
                    t.namespace_str(),
                    t.name
                )
            })
            .collect();
        let channels: Vec<(String, Channel)> = lock(&self.by_principal)
            .iter()
            .flat_map(|(p, list)| {
                list.iter()
                    .filter(|c| !c.closed())
                    .map(|c| (p.clone(), c.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        if channels.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            for (principal, channel) in channels {
                for uri in &uris {
                    let notice = Notice {
                        principal: principal.clone(),
                        resource: uri.clone(),
                        data: Value::Null,
                    };
                    if let Err(e) = send_update(&channel, &notice).await {
                        tracing::debug!(%principal, "a session could not take a resource update: {e}");
                    }
                }
            }
        });
    }
}

/// Only the resource update of `notice` (no log message), to a channel subscribed to its resource.
async fn send_update(channel: &Channel, notice: &Notice) -> Result<(), String> {
    match channel {
        Channel::Session(session) => match session.peer.get() {
            Some(peer) if session.subscribed(&notice.resource) => peer
                .notify_resource_updated(ResourceUpdatedNotificationParam::new(
                    notice.resource.clone(),
                ))
                .await
                .map_err(|e| e.to_string()),
            _ => Ok(()),
        },
        Channel::Listen(..) => send(channel, notice).await,
    }
}

async fn send(channel: &Channel, notice: &Notice) -> Result<(), String> {
    match channel {
        Channel::Session(session) => {
            let Some(peer) = session.peer.get() else {
                return Ok(());
            };
            if session.wants_log(LoggingLevel::Notice) {
                peer.notify_logging_message(
                    LoggingMessageNotificationParam::new(LoggingLevel::Notice, notice.data.clone())
                        .with_logger(LOGGER),
                )
                .await
                .map_err(|e| e.to_string())?;
            }
            if session.subscribed(&notice.resource) {
                peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(
                    notice.resource.clone(),
                ))
                .await
                .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        Channel::Listen(_, sink) => {
            let accepted = sink
                .accepted()
                .resource_subscriptions
                .as_ref()
                .is_some_and(|uris| uris.contains(&notice.resource));
            if accepted {
                sink.notify_resource_updated(notice.resource.clone())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_hears_notices_unless_it_asked_for_fewer_logs() {
        let session = Session::default();
        assert!(
            session.wants_log(LoggingLevel::Notice),
            "no level set: sent"
        );
        session.set_level(LoggingLevel::Info);
        assert!(session.wants_log(LoggingLevel::Notice));
        session.set_level(LoggingLevel::Warning);
        assert!(!session.wants_log(LoggingLevel::Notice));
    }

    #[test]
    fn subscriptions_are_bounded_and_can_be_dropped() {
        let session = Session::default();
        for i in 0..MAX_SUBSCRIPTIONS {
            assert!(session.subscribe(&format!("grant://g{i}")));
        }
        assert!(!session.subscribe("grant://one-too-many"));
        assert!(session.subscribe("grant://g0"), "an existing one is fine");
        session.unsubscribe("grant://g0");
        assert!(!session.subscribed("grant://g0"));
        assert!(session.subscribe("grant://now-there-is-room"));
    }

    #[test]
    fn a_principal_without_sessions_is_pushed_nothing() {
        let sessions = Sessions::default();
        assert_eq!(sessions.live("analyst"), 0);
        // No runtime is needed: with no channel nothing is spawned.
        sessions.push(Notice {
            principal: "analyst".to_string(),
            resource: "request://r".to_string(),
            data: Value::Null,
        });
    }
}
