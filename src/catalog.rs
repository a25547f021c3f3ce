//! Catalog: the lakehouse as Parley sees it — Iceberg tables listed and loaded through the `iceberg` crate's
//! `Catalog` trait, each paired with its data contract.
//!
//! The embedded backend is iceberg-rust's SQL catalog on SQLite with a local warehouse, laid out as pyiceberg's
//! `SqlCatalog` expects, so other engines read the same tables.
//!
//! Invariant: Parley reaches the catalog with its own configuration and credentials only; no agent token or
//! agent-supplied location ever reaches it.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use iceberg::io::LocalFsStorageFactory;
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableIdent};
use iceberg_catalog_sql::{SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE, SqlCatalogBuilder};

use crate::contracts::{ContractStore, LoadedContract, table_facts};
use crate::policy::TableFacts;

/// A table name as agents write it: `namespace.table` (nested namespaces dot-joined).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Namespace levels.
    pub namespace: Vec<String>,
    /// Table.
    pub name: String,
}

impl TableName {
    /// Parses `ns.table` or `ns1.ns2.table`; a name without a namespace or with empty parts is rejected.
    pub fn parse(text: &str) -> Result<TableName, String> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        if parts.len() < 2 || parts.iter().any(|p| p.trim().is_empty()) {
            return Err(format!(
                "{text:?} is not a table name: write it as namespace.table, e.g. sales.orders (list_tables shows them)"
            ));
        }
        let (name, namespace) = parts.split_last().expect("at least two parts");
        Ok(TableName {
            namespace: namespace.iter().map(|s| s.to_string()).collect(),
            name: name.to_string(),
        })
    }

    /// Dot-joined namespace.
    pub fn namespace_str(&self) -> String {
        self.namespace.join(".")
    }

    fn ident(&self) -> Result<TableIdent, CatalogError> {
        let ns = NamespaceIdent::from_vec(self.namespace.clone())
            .map_err(|e| CatalogError::Backend(e.to_string()))?;
        Ok(TableIdent::new(ns, self.name.clone()))
    }

    fn from_ident(ident: &TableIdent) -> TableName {
        TableName {
            namespace: ident.namespace().clone().inner(),
            name: ident.name().to_string(),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.namespace_str(), self.name)
    }
}

/// Failure to reach or read the catalog. It is the server's fault, not the agent's.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog error: {0}")]
    Backend(String),
}

impl From<iceberg::Error> for CatalogError {
    fn from(e: iceberg::Error) -> Self {
        CatalogError::Backend(e.to_string())
    }
}

/// The lakehouse: an Iceberg catalog plus the contracts of its tables.
pub struct Lakehouse {
    catalog: Arc<dyn Catalog>,
    contracts: ContractStore,
}

/// Opens the embedded SQL catalog (SQLite) with its local warehouse.
pub async fn open_sql_catalog(
    catalog_db: &Path,
    warehouse: &Path,
    name: &str,
) -> Result<Arc<dyn Catalog>, CatalogError> {
    let catalog = SqlCatalogBuilder::default()
        .with_storage_factory(Arc::new(LocalFsStorageFactory))
        .load(
            name,
            HashMap::from([
                (
                    SQL_CATALOG_PROP_URI.to_string(),
                    format!("sqlite:{}?mode=rwc", catalog_db.display()),
                ),
                (
                    SQL_CATALOG_PROP_WAREHOUSE.to_string(),
                    format!("file://{}", warehouse.display()),
                ),
            ]),
        )
        .await?;
    Ok(Arc::new(catalog))
}

impl Lakehouse {
    /// A lakehouse over `catalog` with the contracts in `contracts`.
    pub fn new(catalog: Arc<dyn Catalog>, contracts: ContractStore) -> Lakehouse {
        Lakehouse { catalog, contracts }
    }

    /// Every table in the catalog, sorted, across nested namespaces.
    pub async fn list_tables(&self) -> Result<Vec<TableName>, CatalogError> {
        let mut out = Vec::new();
        let mut pending: Vec<Option<NamespaceIdent>> = vec![None];
        let mut seen = std::collections::HashSet::new();
        while let Some(parent) = pending.pop() {
            for ns in self.catalog.list_namespaces(parent.as_ref()).await? {
                if !seen.insert(ns.clone()) {
                    continue;
                }
                for t in self.catalog.list_tables(&ns).await? {
                    out.push(TableName::from_ident(&t));
                }
                pending.push(Some(ns));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Whether the table exists.
    pub async fn exists(&self, table: &TableName) -> Result<bool, CatalogError> {
        let ident = table.ident()?;
        if !self.catalog.namespace_exists(ident.namespace()).await? {
            return Ok(false);
        }
        Ok(self.catalog.table_exists(&ident).await?)
    }

    /// Policy facts of a table, or `None` when it does not exist.
    pub async fn facts(&self, table: &TableName) -> Result<Option<TableFacts>, CatalogError> {
        if !self.exists(table).await? {
            return Ok(None);
        }
        Ok(Some(self.facts_of_listed(table)))
    }

    /// Policy facts of a table known to exist (e.g. from [`Lakehouse::list_tables`]).
    pub fn facts_of_listed(&self, table: &TableName) -> TableFacts {
        table_facts(
            &table.namespace_str(),
            &table.name,
            self.contract(table).map(|c| &c.contract),
        )
    }

    /// Loads the table's current metadata.
    pub async fn load(&self, table: &TableName) -> Result<Table, CatalogError> {
        Ok(self.catalog.load_table(&table.ident()?).await?)
    }

    /// The table's contract, if it has a valid one.
    pub fn contract(&self, table: &TableName) -> Option<&LoadedContract> {
        self.contracts.get(&table.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_parse() {
        let t = TableName::parse("sales.orders").unwrap();
        assert_eq!(t.namespace, ["sales"]);
        assert_eq!(t.name, "orders");
        assert_eq!(TableName::parse("a.b.c").unwrap().namespace_str(), "a.b");
        for bad in ["orders", "", ".x", "sales.", "a..b"] {
            let err = TableName::parse(bad).unwrap_err();
            assert!(err.contains("namespace.table"), "{err}");
        }
    }
}
