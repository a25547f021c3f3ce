//! The resources: `contract://{namespace}/{table}` (a table's contract, YAML), `grant://{grant_id}` and
//! `request://{request_id}` (JSON, the last two subscribable). Listing and reading go through the gate like tools;
//! a resource the caller may not see is not found.

use super::*;

pub(super) const CONTRACT_SCHEME: &str = "contract://";
pub(super) const GRANT_SCHEME: &str = "grant://";
pub(super) const REQUEST_SCHEME: &str = "request://";

/// Resources that change (and can be subscribed to): a request when an owner decides it, a grant when it is
/// revoked.
pub(super) fn changes(uri: &str) -> bool {
    let id = uri
        .strip_prefix(REQUEST_SCHEME)
        .or_else(|| uri.strip_prefix(GRANT_SCHEME));
    id.is_some_and(|id| !id.is_empty() && id.len() <= 100)
}

/// Most resources one `subscriptions/listen` stream may follow.
pub(super) const MAX_LISTEN_URIS: usize = 1000;

/// A resource read's answer: `value` as pretty JSON.
fn json_contents<T: Serialize>(value: &T, uri: String) -> ReadResourceResponse {
    ReadResourceResult::new(vec![
        ResourceContents::text(serde_json::to_string_pretty(value).unwrap_or_default(), uri)
            .with_mime_type("application/json"),
    ])
    .into()
}

/// The resource templates.
pub(super) fn resource_templates() -> ListResourceTemplatesResult {
    ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("contract://{namespace}/{table}", "table contract")
                .with_description("ODCS v3 data contract of a table (YAML)")
                .with_mime_type("application/yaml"),
            ResourceTemplate::new("grant://{grant_id}", "access grant")
                .with_description(
                    "A grant: terms, usage, liveness and its W3C ODRL agreement (JSON); updated when revoked",
                )
                .with_mime_type("application/json"),
            ResourceTemplate::new("request://{request_id}", "access request")
                .with_description(
                    "One of your access requests: state, outcome and history (JSON, as access_status); updated \
                     when an owner decides it",
                )
                .with_mime_type("application/json"),
    ])
}

impl ParleyServer {
    /// The contracts the caller may discover and read, as resources.
    pub(super) async fn contract_resources(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let principal = self.principal(ctx);
        let lakehouse = &self.app.lakehouse;
        let resources = self
            .app
            .gate
            .run(&principal, "resources/list", None, async |c| {
                let mut shown = Vec::new();
                for name in lakehouse.list_tables().await.map_err(internal)?.iter() {
                    let (facts, contract) = lakehouse.facts_and_contract(name);
                    let resource = Resource::Table(facts);
                    let visible = c.peek(Action::Discover, &resource).allowed()
                        && c.peek(Action::ReadContract, &resource).allowed();
                    if visible && contract.is_some() {
                        shown.push(name.clone());
                    }
                }
                // The catalog's own permissions too: only tables it lists for the caller.
                if !lakehouse.authz().is_empty() {
                    let allowed = lakehouse
                        .authz()
                        .allowed(
                            c.principal(),
                            &shown,
                            &[crate::catalog::authz::CatalogAction::IncludeInList],
                        )
                        .await
                        .map_err(ToolError::from)?;
                    let mut allowed = allowed.into_iter();
                    shown.retain(|_| allowed.next().unwrap_or(false));
                }
                Ok(shown
                    .iter()
                    .map(|name| {
                        McpResource::new(
                            format!("{CONTRACT_SCHEME}{}/{}", name.namespace_str(), name.name),
                            format!("{name} contract"),
                        )
                        .with_description(format!("ODCS v3 data contract of {name}"))
                        .with_mime_type("application/yaml")
                    })
                    .collect::<Vec<_>>())
            })
            .await
            .map_err(|e| ErrorData::internal_error(e, None))?;
        Ok(ListResourcesResult::with_all_items(resources))
    }

    /// Reads one resource through the gate.
    pub(super) async fn read(
        &self,
        request: ReadResourceRequestParams,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let principal = self.principal(ctx);
        let uri = request.uri.clone();
        if let Some(id) = uri.strip_prefix(REQUEST_SCHEME) {
            let status = self
                .app
                .gate
                .run(&principal, "resources/read", None, async |c| {
                    self.request_resource(c, id).await
                })
                .await
                .map_err(|e| ErrorData::resource_not_found(e, None))?;
            return Ok(json_contents(&status, request.uri));
        }
        if let Some(id) = uri.strip_prefix(GRANT_SCHEME) {
            let grant = self
                .app
                .gate
                .run(&principal, "resources/read", None, async |c| {
                    self.grant_resource(c, id).await
                })
                .await
                .map_err(|e| ErrorData::resource_not_found(e, None))?;
            return Ok(json_contents(&grant, request.uri));
        }
        let table = uri
            .strip_prefix(CONTRACT_SCHEME)
            .map(|rest| rest.replace('/', "."))
            .unwrap_or_else(|| uri.clone());
        let yaml = self
            .app
            .gate
            .run(&principal, "resources/read", None, async |c| {
                if !uri.starts_with(CONTRACT_SCHEME) {
                    return Err(ToolError::BadRequest(format!(
                        "unknown resource {uri}; resources are contract://{{namespace}}/{{table}}"
                    )));
                }
                self.do_get_contract(c, &table)
                    .await
                    .map(|r| r.yaml.unwrap_or_default())
            })
            .await
            .map_err(|e| ErrorData::resource_not_found(e, None))?;
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(yaml, request.uri).with_mime_type("application/yaml"),
        ])
        .into())
    }
}
