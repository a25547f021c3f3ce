//! Opening the catalogs `parley.toml` names (`[[catalogs]]`), or the embedded SQL catalog when it names none.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::{Catalog, CatalogBuilder};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::{SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE, SqlCatalogBuilder};

use super::CatalogError;
use super::federation::Federation;
use crate::config::{CatalogKind, CatalogSettings, Config};
use crate::demo::DataDir;

/// The catalogs Parley serves, as one.
pub struct Opened {
    /// Every table, named as agents name it.
    pub catalog: Arc<dyn Catalog>,
    /// How agents' SQL names tables.
    pub naming: Naming,
    /// Each catalog by name, as configured (for start-up checks and writers).
    pub members: Vec<(CatalogSettings, Arc<dyn Catalog>)>,
}

/// How table names map to catalogs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Naming {
    /// One catalog: `namespace.table` (or `<catalog>.namespace.table`).
    Single(String),
    /// Several: `catalog.namespace.table`, the catalog being the first namespace level.
    Federated(Vec<String>),
}

impl Naming {
    /// The DataFusion catalog that unqualified names resolve in (with several catalogs, agents' SQL always names
    /// one, so this only holds the empty default schema).
    pub fn default_catalog(&self) -> String {
        match self {
            Naming::Single(name) => name.clone(),
            Naming::Federated(names) => names.first().cloned().unwrap_or_default(),
        }
    }

    /// The catalog names agents may write.
    pub fn catalogs(&self) -> Vec<String> {
        match self {
            Naming::Single(name) => vec![name.clone()],
            Naming::Federated(names) => names.clone(),
        }
    }
}

/// The catalogs in effect: `config.catalogs`, or the embedded SQL catalog of `dir` named `config.catalog_name`.
pub fn effective(config: &Config, dir: &DataDir) -> Vec<CatalogSettings> {
    if !config.catalogs.is_empty() {
        return config.catalogs.clone();
    }
    vec![CatalogSettings {
        name: config.catalog_name.clone(),
        kind: CatalogKind::Sql,
        authorization: None,
        files_outside_location: None,
        properties: [
            (
                SQL_CATALOG_PROP_URI.to_string(),
                format!("sqlite:{}?mode=rwc", dir.catalog_db().display()),
            ),
            (
                SQL_CATALOG_PROP_WAREHOUSE.to_string(),
                format!("file://{}", dir.warehouse().display()),
            ),
        ]
        .into(),
    }]
}

/// Where table files are read: local files, S3 and S3-compatible stores (the scheme of each path decides), with
/// the catalog's storage properties (`s3.endpoint`, `s3.region`, `s3.access-key-id`, `s3.path-style-access`, ...)
/// merged with what a REST catalog's `/v1/config` and each table's load answer (vended credentials).
/// Local files are read with buffers of their own size (see [`super::storage`]).
fn storage() -> Arc<dyn iceberg::io::StorageFactory> {
    Arc::new(super::storage::LocalReadsFactory::default())
}

/// Opens one catalog. REST catalogs are reached lazily (their `/v1/config` on first use); see [`probe`].
pub async fn open_one(
    settings: &CatalogSettings,
    dir: &DataDir,
) -> Result<Arc<dyn Catalog>, CatalogError> {
    let mut props: HashMap<String, String> = settings.properties.clone().into_iter().collect();
    match settings.kind {
        CatalogKind::Sql => {
            // Defaults: the data dir's catalog file and warehouse.
            props
                .entry(SQL_CATALOG_PROP_URI.to_string())
                .or_insert_with(|| format!("sqlite:{}?mode=rwc", dir.catalog_db().display()));
            props
                .entry(SQL_CATALOG_PROP_WAREHOUSE.to_string())
                .or_insert_with(|| format!("file://{}", dir.warehouse().display()));
            let catalog = SqlCatalogBuilder::default()
                .with_storage_factory(storage())
                .load(&settings.name, props)
                .await?;
            Ok(Arc::new(catalog))
        }
        CatalogKind::Rest => open_rest(settings).await,
    }
}

/// The request header asking a REST catalog to vend storage credentials with each table it loads.
const ACCESS_DELEGATION: &str = "header.X-Iceberg-Access-Delegation";

/// Opens a REST catalog with `settings.properties`. Like pyiceberg, Parley asks for vended credentials
/// (`X-Iceberg-Access-Delegation: vended-credentials`) unless `header.X-Iceberg-Access-Delegation` is set (an
/// empty value sends no such header): a catalog that vends them answers each table load with storage
/// properties for that table (keys, session token, endpoint), which its reads then use, renewed with each load.
/// With a client credential, the catalog's token is renewed when it expires (see [`super::refresh`]).
pub async fn open_rest(settings: &CatalogSettings) -> Result<Arc<dyn Catalog>, CatalogError> {
    let mut props: HashMap<String, String> = settings.properties.clone().into_iter().collect();
    match props.get(ACCESS_DELEGATION).map(String::as_str) {
        None => {
            props.insert(ACCESS_DELEGATION.into(), "vended-credentials".into());
        }
        Some("") => {
            props.remove(ACCESS_DELEGATION);
        }
        Some(_) => {}
    }
    let renewable = props.contains_key("credential") && !props.contains_key("token");
    let catalog = RestCatalogBuilder::default()
        .with_storage_factory(storage())
        .load(&settings.name, props)
        .await?;
    Ok(if renewable {
        Arc::new(super::refresh::Refreshing::new(catalog))
    } else {
        Arc::new(catalog)
    })
}

/// Opens the catalogs in effect (see [`effective`]); several are federated under their names.
pub async fn open(config: &Config, dir: &DataDir) -> Result<Opened, CatalogError> {
    let settings = effective(config, dir);
    let mut members = Vec::new();
    for s in settings {
        let catalog = open_one(&s, dir).await?;
        members.push((s, catalog));
    }
    let (catalog, naming): (Arc<dyn Catalog>, Naming) = match members.as_slice() {
        [(s, only)] => (only.clone(), Naming::Single(s.name.clone())),
        _ => (
            Arc::new(Federation::new(
                members
                    .iter()
                    .map(|(s, c)| (s.name.clone(), c.clone()))
                    .collect(),
            )),
            Naming::Federated(members.iter().map(|(s, _)| s.name.clone()).collect()),
        ),
    };
    Ok(Opened {
        catalog,
        naming,
        members,
    })
}

/// Asks a catalog for its top-level namespaces, so a wrong URL or credential is said at start-up in words a user
/// can act on. `Ok(n)`: it answered with `n` namespaces.
pub async fn probe(settings: &CatalogSettings, catalog: &dyn Catalog) -> Result<usize, String> {
    match catalog.list_namespaces(None).await {
        Ok(namespaces) => Ok(namespaces.len()),
        Err(e) => {
            let where_ = settings
                .properties
                .get("uri")
                .map(|u| format!(" at {u}"))
                .unwrap_or_default();
            Err(format!(
                "catalog {:?}{where_}: {}",
                settings.name,
                CatalogError::from(e)
            ))
        }
    }
}
