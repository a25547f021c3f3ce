//! Identity: who is calling. Produces a [`Principal`] for every request.
//!
//! On stdio the caller is the principal configured for the local user (`--principal` / `PARLEY_PRINCIPAL`); the
//! groups come from the policy directory. On HTTP the same seam will carry a principal built from a validated
//! JWT (a later issue); until then HTTP serves the configured principal too, and binds to loopback by default.
//!
//! Invariant: no agent token ever leaves this module; other modules see only the [`Principal`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

/// The caller of a tool: a user id, the groups it belongs to, and free attributes (claims).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// Stable identifier, e.g. `analyst` or an IdP subject.
    pub id: String,
    /// Groups the principal is a member of (direct memberships).
    pub groups: Vec<String>,
    /// Other attributes (e.g. token claims) for policies and audit.
    pub attrs: BTreeMap<String, String>,
}

impl Principal {
    /// A principal with the given id and groups and no other attributes.
    pub fn new(id: impl Into<String>, groups: Vec<String>) -> Principal {
        Principal {
            id: id.into(),
            groups,
            attrs: BTreeMap::new(),
        }
    }
}

/// Where groups of a principal come from when the transport only knows its id (stdio).
pub trait Directory: Send + Sync {
    /// Direct groups of `principal_id`; empty for an unknown principal.
    fn groups_of(&self, principal_id: &str) -> Vec<String>;
}

/// Resolves the principal of a request.
///
/// Contract: `resolve` never fails for a configured local principal; an unknown id yields a principal with no
/// groups, which the policy denies everything (it is not an error, so unknown callers learn nothing).
pub trait IdentitySource: Send + Sync {
    /// The principal behind one request.
    fn resolve(&self) -> Principal;
}

/// The local user of a stdio (or unauthenticated loopback HTTP) server: one configured principal.
pub struct LocalIdentity {
    principal: Principal,
}

impl LocalIdentity {
    /// The configured principal with its groups looked up in `directory`.
    pub fn new(principal_id: &str, directory: &dyn Directory) -> LocalIdentity {
        LocalIdentity {
            principal: Principal::new(principal_id, directory.groups_of(principal_id)),
        }
    }
}

impl IdentitySource for LocalIdentity {
    fn resolve(&self) -> Principal {
        self.principal.clone()
    }
}

/// Shared handle to the identity source chosen at start-up.
pub type Identity = Arc<dyn IdentitySource>;
