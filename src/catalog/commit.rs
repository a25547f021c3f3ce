//! Commits that pass through Parley: an engine's table update (the Iceberg REST `updateTable` request: the
//! requirements it asserts and the updates it makes) staged against the table's current metadata, so what it
//! changes can be checked against the table's contract before anything is written; then landed in the catalog.
//!
//! Landing in a SQL catalog writes the new metadata file next to the current one and swaps the catalog's pointer
//! only if it still names the metadata the commit was staged on — the optimistic concurrency every Iceberg
//! catalog uses. In a REST catalog, the request itself (the writer's requirements and updates, unchanged) is
//! sent to the catalog's own `updateTable` with Parley's service credentials (iceberg-rust does not let a commit
//! be built from a REST request's parts), so the catalog checks the requirements again and applies it.
//!
//! Invariant: nothing is written unless every requirement holds against the metadata the commit was staged on,
//! and the pointer moves only from that metadata.

use std::str::FromStr;

use iceberg::spec::TableMetadata;
use iceberg::table::Table;
use iceberg::{MetadataLocation, TableRequirement, TableUpdate};
use serde::Deserialize;

use crate::config::{CatalogKind, CatalogSettings};

/// The body of an Iceberg REST `updateTable` request (`POST .../tables/{table}`).
#[derive(Debug, Deserialize, serde::Serialize)]
pub struct UpdateTableRequest {
    /// What the writer assumed of the table (its current schema, snapshot, ...).
    #[serde(default)]
    pub requirements: Vec<TableRequirement>,
    /// What it changes.
    #[serde(default)]
    pub updates: Vec<TableUpdate>,
}

/// Why a commit did not land.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A requirement does not hold: the table changed since the writer read it (retry on fresh metadata).
    #[error("the table changed since it was read ({0}); reload the table and retry the commit")]
    Conflict(String),
    /// The updates cannot apply (an invalid schema, a missing field id, ...).
    #[error("the commit cannot apply: {0}")]
    Invalid(String),
    /// This catalog's commits cannot pass through Parley.
    #[error("{0}")]
    Unsupported(String),
    /// Writing the metadata or moving the pointer failed.
    #[error("the commit could not be written: {0}")]
    Failed(String),
}

/// The metadata `request` makes of `current`'s, without writing anything.
pub fn stage(current: &Table, request: &UpdateTableRequest) -> Result<TableMetadata, CommitError> {
    for requirement in &request.requirements {
        requirement
            .check(Some(current.metadata()))
            .map_err(|e| CommitError::Conflict(e.message().to_string()))?;
    }
    let mut builder = current
        .metadata()
        .clone()
        .into_builder(current.metadata_location().map(str::to_string));
    for update in request.updates.iter().cloned() {
        builder = update
            .apply(builder)
            .map_err(|e| CommitError::Invalid(e.message().to_string()))?;
    }
    Ok(builder
        .build()
        .map_err(|e| CommitError::Invalid(e.message().to_string()))?
        .metadata)
}

/// Refuses what a commit through Parley may not do: point the table at files outside its own location. A new
/// snapshot's manifest list, manifests and data and delete files must all lie under the table's location (or its
/// `write.data.path` / `write.metadata.path`), without `..` segments — otherwise an owner of one table could
/// make Parley, reading with its own storage credentials, serve another table's files under this table's grants.
/// Moving the table (`set-location`), setting the properties that say where its files lie, encryption keys and
/// statistics files are not accepted here.
pub async fn check_files(
    current: &Table,
    staged: &TableMetadata,
    request: &UpdateTableRequest,
) -> Result<(), CommitError> {
    let roots = table_roots(current.metadata());
    let inside = |path: &str| within(&roots, path);
    let outside = |what: &str, path: &str| {
        CommitError::Invalid(format!(
            "{what} {path} lies outside the table's location ({}): commits through Parley may reference only \
             the table's own files",
            roots.join(", ")
        ))
    };
    let mut snapshots = Vec::new();
    for update in &request.updates {
        match update {
            TableUpdate::AddSnapshot { snapshot } => snapshots.push(snapshot.snapshot_id()),
            // Where the table's files may lie is the catalog's to say: through Parley a commit could first widen
            // it (`write.data.path` = another table's folder) and then name that table's files.
            TableUpdate::SetProperties { updates } if updates.keys().any(|k| locates(k)) => {
                return Err(CommitError::Invalid(format!(
                    "{} may not be changed through Parley (it says where the table's files lie); set it in the \
                     catalog directly",
                    updates
                        .keys()
                        .filter(|k| locates(k))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            TableUpdate::SetLocation { .. }
            | TableUpdate::AddEncryptionKey { .. }
            | TableUpdate::RemoveEncryptionKey { .. }
            | TableUpdate::SetStatistics { .. }
            | TableUpdate::SetPartitionStatistics { .. } => {
                return Err(CommitError::Invalid(format!(
                    "{} is not accepted through Parley; make this change in the catalog directly",
                    serde_json::to_value(update)
                        .ok()
                        .and_then(|v| v["action"].as_str().map(str::to_string))
                        .unwrap_or_else(|| "this update".to_string())
                )));
            }
            _ => {}
        }
    }
    if snapshots.is_empty() {
        return Ok(());
    }
    let table = Table::builder()
        .identifier(current.identifier().clone())
        .file_io(current.file_io().clone())
        .metadata(staged.clone())
        .readonly(true)
        .runtime(iceberg::Runtime::try_current().map_err(|e| CommitError::Failed(e.to_string()))?)
        .build()
        .map_err(|e| CommitError::Failed(e.to_string()))?;
    for id in snapshots {
        let Some(snapshot) = staged.snapshot_by_id(id) else {
            continue;
        };
        if !inside(snapshot.manifest_list()) {
            return Err(outside("the manifest list", snapshot.manifest_list()));
        }
        let list = table
            .manifest_list_reader(snapshot)
            .load()
            .await
            .map_err(|e| CommitError::Invalid(format!("the new snapshot's manifest list: {e}")))?;
        for manifest in list.entries() {
            if !inside(&manifest.manifest_path) {
                return Err(outside("the manifest", &manifest.manifest_path));
            }
            let entries = manifest.load_manifest(table.file_io()).await.map_err(|e| {
                CommitError::Invalid(format!("manifest {}: {e}", manifest.manifest_path))
            })?;
            for entry in entries.entries() {
                let path = entry.data_file().file_path();
                if !inside(path) {
                    return Err(outside("the file", path));
                }
            }
        }
    }
    Ok(())
}

/// Where a table's files may lie: its location, and its `write.data.path` and `write.metadata.path`.
pub(crate) fn table_roots(meta: &TableMetadata) -> Vec<String> {
    let mut roots = vec![meta.location().trim_end_matches('/').to_string()];
    for key in ["write.data.path", "write.metadata.path"] {
        if let Some(path) = meta.properties().get(key) {
            roots.push(path.trim_end_matches('/').to_string());
        }
    }
    roots
}

/// Whether `path` lies under one of `roots` ([`table_roots`]), with no `..` segment; local paths compare alike
/// whichever form names them (`file:///p`, `file:/p`, `/p`).
pub(crate) fn within(roots: &[String], path: &str) -> bool {
    fn local(p: &str) -> &str {
        p.strip_prefix("file://")
            .or_else(|| p.strip_prefix("file:"))
            .unwrap_or(p)
    }
    let path = local(path);
    !path.split('/').any(|segment| segment == "..")
        && roots.iter().any(|root| {
            path.strip_prefix(local(root))
                .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// Whether a table property says where the table's files lie (`write.data.path`, `write.metadata.path`,
/// `write.object-storage.path`, ...).
fn locates(key: &str) -> bool {
    key.starts_with("write.") && (key.ends_with(".path") || key.ends_with("location"))
}

/// Writes `staged` as `current`'s next metadata file and points the catalog at it, if the catalog still points
/// at `current`'s. `ident` is the table's name in its own catalog (without a federation's catalog level).
/// Returns the new metadata location.
pub async fn land(
    settings: &CatalogSettings,
    ident: &iceberg::TableIdent,
    current: &Table,
    staged: &TableMetadata,
    request: &UpdateTableRequest,
) -> Result<String, CommitError> {
    if settings.kind == CatalogKind::Rest {
        return land_rest(settings, ident, request).await;
    }
    let uri = settings
        .properties
        .get(iceberg_catalog_sql::SQL_CATALOG_PROP_URI)
        .ok_or_else(|| CommitError::Failed("the SQL catalog has no uri".into()))?;
    let old = current
        .metadata_location()
        .ok_or_else(|| CommitError::Failed("the table has no metadata location".into()))?;
    let next = MetadataLocation::from_str(old)
        .map_err(|e| CommitError::Failed(e.to_string()))?
        .with_next_version()
        .with_new_metadata(staged);
    staged
        .write_to(current.file_io(), &next)
        .await
        .map_err(|e| CommitError::Failed(e.to_string()))?;
    let next = next.to_string();
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(uri)
        .map_err(|e| CommitError::Failed(format!("the SQL catalog's uri: {e}")))?;
    let mut conn = sqlx::ConnectOptions::connect(&options)
        .await
        .map_err(|e| CommitError::Failed(format!("the SQL catalog: {e}")))?;
    let moved = sqlx::query(
        "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
         WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? \
           AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = ?",
    )
    .bind(&next)
    .bind(old)
    .bind(&settings.name)
    .bind(ident.namespace().join("."))
    .bind(ident.name())
    .bind(old)
    .execute(&mut conn)
    .await
    .map_err(|e| CommitError::Failed(format!("the SQL catalog: {e}")))?;
    if moved.rows_affected() == 0 {
        return Err(CommitError::Conflict(
            "another commit landed first".to_string(),
        ));
    }
    Ok(next)
}

/// Sends the writer's `updateTable` request — as parsed and checked here, not the bytes received, so the catalog
/// applies exactly what was checked — to a REST catalog as Parley (its `token`, or one for its
/// `credential`), at the catalog's prefix (`/v1/config`'s `overrides.prefix`). Returns the new metadata location.
async fn land_rest(
    settings: &CatalogSettings,
    ident: &iceberg::TableIdent,
    request: &UpdateTableRequest,
) -> Result<String, CommitError> {
    let body = serde_json::to_vec(request).map_err(|e| CommitError::Failed(e.to_string()))?;
    let props = &settings.properties;
    let failed = |e: String| CommitError::Failed(format!("catalog {:?}: {e}", settings.name));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let token = super::authz::ServiceToken::new(settings)
        .get(&client)
        .await
        .map_err(failed)?;
    let uri = props
        .get("uri")
        .ok_or_else(|| failed("no uri".to_string()))?
        .trim_end_matches('/');
    let headers = |mut req: reqwest::RequestBuilder| {
        if let Some(token) = &token {
            req = req.bearer_auth(token);
        }
        for (key, value) in props {
            if let Some(name) = key.strip_prefix("header.")
                && !value.is_empty()
            {
                req = req.header(name, value);
            }
        }
        req
    };
    let mut config = headers(client.get(format!("{uri}/v1/config")));
    if let Some(warehouse) = props.get("warehouse") {
        config = config.query(&[("warehouse", warehouse)]);
    }
    let config: serde_json::Value = config
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| failed(format!("/v1/config: {e}")))?
        .json()
        .await
        .map_err(|e| failed(format!("/v1/config: {e}")))?;
    let prefix = config["overrides"]["prefix"]
        .as_str()
        .or_else(|| props.get("prefix").map(String::as_str))
        .unwrap_or_default()
        .to_string();
    let mut url = reqwest::Url::parse(uri).map_err(|e| failed(format!("uri: {e}")))?;
    {
        let mut path = url
            .path_segments_mut()
            .map_err(|()| failed("uri cannot be a base".to_string()))?;
        path.pop_if_empty().push("v1");
        path.extend(prefix.split('/').filter(|p| !p.is_empty()));
        path.push("namespaces")
            .push(&ident.namespace().join("\u{1f}"))
            .push("tables")
            .push(ident.name());
    }
    let response = headers(client.post(url))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.is_success() {
        return body["metadata-location"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| failed("the answer has no metadata-location".to_string()));
    }
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("no message")
        .to_string();
    Err(match status.as_u16() {
        409 => CommitError::Conflict(message),
        400 | 422 => CommitError::Invalid(message),
        code => failed(format!("HTTP {code}: {message}")),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use iceberg::spec::{NestedField, PrimitiveType, Type};
    use iceberg::{NamespaceIdent, TableIdent};

    use super::*;
    use crate::catalog::open_sql_catalog;
    use crate::demo::{TableLayout, create_table};

    /// An updateTable body as pyiceberg sends it: add an optional string column `note` (id 2) to a table whose
    /// current schema is `schema_id` with `last_column_id` 1.
    fn add_note(schema_id: i32) -> UpdateTableRequest {
        serde_json::from_value(serde_json::json!({
            "requirements": [
                {"type": "assert-current-schema-id", "current-schema-id": schema_id},
                {"type": "assert-last-assigned-field-id", "last-assigned-field-id": 1}
            ],
            "updates": [
                {"action": "add-schema", "last-column-id": 2, "schema": {
                    "type": "struct", "schema-id": schema_id + 1, "fields": [
                        {"id": 1, "name": "n", "required": true, "type": "long"},
                        {"id": 2, "name": "note", "required": false, "type": "string"}
                    ]}},
                {"action": "set-current-schema", "schema-id": -1}
            ]
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_commit_lands_only_on_the_metadata_it_was_staged_on() {
        let dir = tempfile::tempdir().unwrap();
        let (db, wh) = (dir.path().join("c.db"), dir.path().join("w"));
        let catalog = open_sql_catalog(&db, &wh, "t").await.unwrap();
        let ns = NamespaceIdent::new("ns".to_string());
        catalog.create_namespace(&ns, HashMap::new()).await.unwrap();
        let layout = TableLayout {
            namespace: "ns",
            name: "e",
            fields: vec![NestedField::required(
                1,
                "n",
                Type::Primitive(PrimitiveType::Long),
            )],
            partition: None,
            properties: vec![],
        };
        let table = create_table(catalog.as_ref(), layout).await.unwrap();
        let ident = TableIdent::new(ns, "e".to_string());
        let settings = CatalogSettings {
            name: "t".to_string(),
            kind: CatalogKind::Sql,
            authorization: None,
            files_outside_location: None,
            properties: [(
                iceberg_catalog_sql::SQL_CATALOG_PROP_URI.to_string(),
                format!("sqlite:{}", db.display()),
            )]
            .into(),
        };
        let schema_id = table.metadata().current_schema_id();

        // A requirement that does not hold: nothing staged.
        let stale = stage(&table, &add_note(schema_id + 7));
        assert!(matches!(stale, Err(CommitError::Conflict(_))), "{stale:?}");

        let staged = stage(&table, &add_note(schema_id)).unwrap();
        assert!(staged.current_schema().field_by_name("note").is_some());
        let location = land(&settings, &ident, &table, &staged, &add_note(schema_id))
            .await
            .unwrap();
        let now = catalog.load_table(&ident).await.unwrap();
        assert_eq!(now.metadata_location(), Some(location.as_str()));
        assert!(
            now.metadata()
                .current_schema()
                .field_by_name("note")
                .is_some()
        );

        // A second commit staged on the old metadata: the pointer moved, so it does not land.
        let again = land(&settings, &ident, &table, &staged, &add_note(schema_id)).await;
        assert!(matches!(again, Err(CommitError::Conflict(_))), "{again:?}");
        assert_eq!(
            catalog
                .load_table(&ident)
                .await
                .unwrap()
                .metadata_location(),
            Some(location.as_str())
        );
    }
}
