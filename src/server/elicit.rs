//! Elicitation: asking the person behind the client, with the mechanism the client's protocol has. Up to
//! protocol 2025-11-25 the server sends an `elicitation/create` request and the answer comes back within the tool
//! call ([`Asker::Request`]); on 2026-07-28 (SEP-2322, no server-to-client requests) the tool call ends with an
//! input-required result carrying the question and a `requestState`, and the client retries the same call with
//! the person's answer and the echoed state ([`Asker::InputRequired`]).
//!
//! Invariant: an echoed `requestState` is never trusted. It is only a handle — which question, which negotiation
//! request — sealed with an HMAC under a server-side key over the question, the request id, the caller's
//! principal and a digest of the call's arguments, and checked before anything is read from it. The negotiation
//! itself stays in the store, so a retry may reach any replica and a forged, altered or borrowed handle is refused.

use hmac::{Hmac, Mac};
use rmcp::model::{
    ElicitRequest, ElicitRequestParams, ElicitResult, ElicitationAction, ElicitationSchema,
    InputRequest, InputRequests, InputRequiredResult, InputResponses, JsonObject, ProtocolVersion,
};
use rmcp::service::RequestContext;
use rmcp::{Peer, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::gate::ToolError;

/// What a person answers when asked to acknowledge a contract's usage terms.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Acknowledgement {
    /// True to accept the usage terms and start the grant.
    pub accept: bool,
}

rmcp::elicit_safe!(Acknowledgement);

/// What an approver answers when asked to approve a pending request at once.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Approval {
    /// True to approve the request now; false leaves it pending (decide later with decide_request).
    pub approve: bool,
    /// Why; shown to the requester and audited.
    #[serde(default)]
    pub reason: String,
}

rmcp::elicit_safe!(Approval);

/// A question Parley asks a person during `request_access`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Question {
    /// Acknowledge the usage terms before an automatic grant starts ([`Acknowledgement`]).
    Acknowledge,
    /// Approve, as one of its approvers, a request that would otherwise wait ([`Approval`]).
    Approve,
}

impl Question {
    /// The key of the question in `inputRequests` / `inputResponses`, and its name in a `requestState`.
    fn key(self) -> &'static str {
        match self {
            Question::Acknowledge => "acknowledge",
            Question::Approve => "approve",
        }
    }

    fn from_key(key: &str) -> Option<Question> {
        [Question::Acknowledge, Question::Approve]
            .into_iter()
            .find(|q| q.key() == key)
    }

    fn schema(self) -> Result<ElicitationSchema, serde_json::Error> {
        match self {
            Question::Acknowledge => ElicitationSchema::from_type::<Acknowledgement>(),
            Question::Approve => ElicitationSchema::from_type::<Approval>(),
        }
    }
}

/// How the person behind the client can be asked during this call.
pub(super) enum Asker {
    /// A server-to-client `elicitation/create` request (protocol up to 2025-11-25), and the call's cancellation
    /// (the client's `notifications/cancelled` ends the wait).
    Request(Peer<RoleServer>, tokio_util::sync::CancellationToken),
    /// An input-required result answered by the client's retry (protocol 2026-07-28).
    InputRequired,
}

/// What the person answered.
#[derive(Debug)]
pub(super) enum Answer<T> {
    /// They filled in the form.
    Given(T),
    /// They declined or cancelled (or sent an empty form).
    Refused,
    /// No answer came: the client failed to ask, answered something other than the form, or not within
    /// [`ASK_WITHIN`]. Why, for the record.
    Unanswered(String),
}

/// How long an `elicitation/create` question waits for its answer. The call holds the question's request open
/// meanwhile; a person who answers later can ask again.
pub(super) const ASK_WITHIN: std::time::Duration = std::time::Duration::from_secs(600);

impl Asker {
    /// How to ask, when the client declared form elicitation; `None` when it cannot be asked, so the explicit tool
    /// call stands instead.
    pub(super) fn of(ctx: &RequestContext<RoleServer>) -> Option<Asker> {
        let forms = ctx
            .client_capabilities()
            .and_then(|c| c.elicitation)
            // A client that names neither mode supports forms (MCP 2025-06-18 compatibility).
            .is_some_and(|e| e.form.is_some() || e.url.is_none());
        if !forms {
            return None;
        }
        let modern = ctx
            .protocol_version()
            .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
        Some(if modern {
            Asker::InputRequired
        } else {
            Asker::Request(ctx.peer.clone(), ctx.ct.clone())
        })
    }
}

/// Asks through an `elicitation/create` request and waits for the answer, at most [`ASK_WITHIN`]. Whatever goes
/// wrong on the client's side is an answer too ([`Answer::Unanswered`]): the caller ends or keeps the request
/// as for a refusal, never leaving it waiting for an answer that cannot come.
pub(super) async fn ask<T>(
    peer: &Peer<RoleServer>,
    cancelled: &tokio_util::sync::CancellationToken,
    message: String,
) -> Answer<T>
where
    T: rmcp::service::ElicitationSafe + DeserializeOwned,
{
    use rmcp::service::{ElicitationError as E, ServiceError};
    let asked = tokio::select! {
        asked = peer.elicit_with_timeout::<T>(message, Some(ASK_WITHIN)) => asked,
        () = cancelled.cancelled() => {
            return Answer::Unanswered("the client cancelled the call while the question waited".to_string());
        }
    };
    match asked {
        Ok(Some(answer)) => Answer::Given(answer),
        Ok(None) | Err(E::UserDeclined) | Err(E::UserCancelled) | Err(E::NoContent) => {
            Answer::Refused
        }
        Err(E::ParseError { error, .. }) => Answer::Unanswered(format!(
            "the client's answer did not match the question's form ({error})"
        )),
        Err(E::Service(ServiceError::Timeout { .. })) => Answer::Unanswered(format!(
            "no answer within {} minutes",
            ASK_WITHIN.as_secs() / 60
        )),
        Err(e) => Answer::Unanswered(format!("the client could not ask the user ({e})")),
    }
}

/// The input-required result asking `question` with `message`; the client retries with the answer and `state`.
pub(super) fn input_required(
    question: Question,
    message: String,
    state: String,
) -> Result<InputRequiredResult, ToolError> {
    let schema = question.schema().map_err(|e| {
        ToolError::Internal(format!(
            "the {} form has no valid schema: {e}",
            question.key()
        ))
    })?;
    let request = ElicitRequest::new(ElicitRequestParams::FormElicitationParams {
        meta: None,
        message,
        requested_schema: schema,
    });
    let mut requests = InputRequests::new();
    requests.insert(
        question.key().to_string(),
        InputRequest::Elicitation(request),
    );
    Ok(InputRequiredResult::new(Some(requests), Some(state)))
}

/// The answer to `question` among a retry's input responses; `None` when the client sent none (ask again).
pub(super) fn answer<T: DeserializeOwned>(
    responses: Option<&InputResponses>,
    question: Question,
) -> Result<Option<Answer<T>>, ToolError> {
    let Some(value) = responses.and_then(|r| r.get(question.key())) else {
        return Ok(None);
    };
    let result: ElicitResult = serde_json::from_value(value.clone()).map_err(|e| {
        ToolError::BadRequest(format!(
            "inputResponses.{} is not an elicitation result: {e}",
            question.key()
        ))
    })?;
    match (result.action, result.content) {
        (ElicitationAction::Accept, Some(content)) => serde_json::from_value(content)
            .map(|a| Some(Answer::Given(a)))
            .map_err(|e| {
                ToolError::BadRequest(format!(
                    "inputResponses.{} does not match the form that was asked: {e}",
                    question.key()
                ))
            }),
        _ => Ok(Some(Answer::Refused)),
    }
}

/// SHA-256 (hex) of a call's arguments in canonical form: a retry must repeat the original call.
pub(super) fn call_digest(args: &JsonObject) -> String {
    let canonical = crate::audit::canonical(&serde_json::Value::Object(args.clone()));
    crate::audit::digest(&canonical.to_string())
}

type HmacSha256 = Hmac<Sha256>;

/// Version tag of the `requestState` handles this module issues.
const STATE_VERSION: &str = "v1";

/// Hex digits of a question's text kept in its `requestState`.
const SHOWN_DIGITS: usize = 16;

/// What a `requestState` keeps of the text its question showed (a prefix of its SHA-256): an answer given to one
/// text is not taken for another (a contract changed between the question and the retry).
pub(super) fn shown_digest(text: &str) -> String {
    crate::audit::digest(text)[..SHOWN_DIGITS].to_string()
}

/// Seals and opens `requestState` handles under a key derived from a server-side secret.
pub(super) struct StateSeal {
    key: [u8; 32],
}

impl StateSeal {
    /// A seal keyed by `secret` (domain-separated, so the key is used for nothing else).
    pub(super) fn new(secret: &str) -> StateSeal {
        let mut hasher = Sha256::new();
        hasher.update(b"parley request-state key\0");
        hasher.update(secret.as_bytes());
        StateSeal {
            key: hasher.finalize().into(),
        }
    }

    fn mac(
        &self,
        question: Question,
        request_id: &str,
        principal: &str,
        call: &str,
        shown: &str,
    ) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        // A JSON array keeps the fields apart whatever characters a principal id holds.
        let fields = serde_json::json!([
            STATE_VERSION,
            question.key(),
            request_id,
            principal,
            call,
            shown
        ]);
        mac.update(fields.to_string().as_bytes());
        mac
    }

    /// The handle for asking `question` about `request_id` in a call by `principal` with arguments digest `call`,
    /// showing the text whose [`shown_digest`] is `shown` (an answer is to that text only).
    pub(super) fn seal(
        &self,
        question: Question,
        request_id: &str,
        principal: &str,
        call: &str,
        shown: &str,
    ) -> String {
        let tag = self
            .mac(question, request_id, principal, call, shown)
            .finalize()
            .into_bytes();
        format!(
            "{STATE_VERSION}.{}.{request_id}.{shown}.{}",
            question.key(),
            hex::encode(tag)
        )
    }

    /// The question and request id of a handle this server sealed for `principal` and a call with the same
    /// arguments; an agent-facing error for anything else.
    pub(super) fn open(
        &self,
        handle: &str,
        principal: &str,
        call: &str,
    ) -> Result<(Question, String, String), ToolError> {
        let refused = || {
            ToolError::BadRequest(
                "requestState was not issued by this server for this call and caller (a retry must repeat the \
                 original arguments and echo requestState unchanged); call request_access again without \
                 requestState"
                    .to_string(),
            )
        };
        let parts: Vec<&str> = handle.split('.').collect();
        let [version, question, request_id, shown, tag] = parts.as_slice() else {
            return Err(refused());
        };
        if *version != STATE_VERSION
            || request_id.is_empty()
            || !request_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
            || shown.len() != SHOWN_DIGITS
            || !shown.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
        {
            return Err(refused());
        }
        let question = Question::from_key(question).ok_or_else(refused)?;
        let tag = hex::decode(tag).map_err(|_| refused())?;
        self.mac(question, request_id, principal, call, shown)
            .verify_slice(&tag)
            .map_err(|_| refused())?;
        Ok((question, request_id.to_string(), shown.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_state_opens_only_for_its_principal_and_call() {
        let seal = StateSeal::new("secret");
        let shown = shown_digest("Approve request req-1?");
        let handle = seal.seal(Question::Approve, "req-1", "alice", "c1", &shown);
        assert_eq!(
            seal.open(&handle, "alice", "c1").unwrap(),
            (Question::Approve, "req-1".to_string(), shown.clone())
        );
        let other_text = handle.replace(&shown, &shown_digest("Approve request req-2?"));
        assert!(
            seal.open(&other_text, "alice", "c1").is_err(),
            "another text"
        );
        assert!(
            seal.open(&handle, "bob", "c1").is_err(),
            "another principal"
        );
        assert!(
            seal.open(&handle, "alice", "c2").is_err(),
            "other arguments"
        );
        assert!(
            StateSeal::new("other")
                .open(&handle, "alice", "c1")
                .is_err(),
            "another server's key"
        );
        let swapped = handle.replace("approve", "acknowledge");
        assert!(
            seal.open(&swapped, "alice", "c1").is_err(),
            "another question"
        );
        let moved = handle.replace("req-1", "req-2");
        assert!(seal.open(&moved, "alice", "c1").is_err(), "another request");
        for junk in [
            "",
            "v1",
            "v1.approve.req-1",
            "v1.approve.req-1.zz",
            "v1.approve.req-1.00",
            "v1.approve.req-1.0123456789abcdef.zz",
            "v1.approve.req-1.0123456789ABCDEF.00",
            "v2.approve.req-1.0123456789abcdef.00",
        ] {
            let e = seal.open(junk, "alice", "c1").unwrap_err();
            assert!(e.to_string().contains("request_access again"), "{e}");
        }
    }

    #[test]
    fn answers_are_read_from_input_responses() {
        let mut responses = InputResponses::new();
        responses.insert(
            "approve".to_string(),
            serde_json::json!({"action": "accept", "content": {"approve": true, "reason": "ok"}}),
        );
        responses.insert(
            "acknowledge".to_string(),
            serde_json::json!({"action": "decline"}),
        );
        let Some(Answer::Given(a)) =
            answer::<Approval>(Some(&responses), Question::Approve).unwrap()
        else {
            panic!("an approval")
        };
        assert!(a.approve && a.reason == "ok");
        assert!(matches!(
            answer::<Acknowledgement>(Some(&responses), Question::Acknowledge).unwrap(),
            Some(Answer::Refused)
        ));
        assert!(
            answer::<Acknowledgement>(None, Question::Acknowledge)
                .unwrap()
                .is_none()
        );
        responses.insert(
            "approve".to_string(),
            serde_json::json!({"action": "accept", "content": {"approve": "yes"}}),
        );
        assert!(answer::<Approval>(Some(&responses), Question::Approve).is_err());
    }

    #[test]
    fn both_forms_have_elicitation_schemas() {
        for q in [Question::Acknowledge, Question::Approve] {
            q.schema().unwrap();
            input_required(q, "?".to_string(), "s".to_string()).unwrap();
        }
    }
}
