//! Several catalogs as one: each configured catalog's name becomes the first namespace level, so a table of
//! catalog `lake` in namespace `sales` is `lake.sales.orders` everywhere in Parley — in agent SQL, contracts,
//! policy (`Parley::Namespace::"lake"` holds every namespace of that catalog), grants and audit records.
//!
//! Invariant: a name routes to exactly one catalog, by its first level; the catalogs never see that level, and
//! a name whose first level names no catalog does not exist (the same answer as a missing table).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation,
    TableIdent,
};

/// Catalogs addressed by name as the first namespace level.
#[derive(Debug)]
pub struct Federation {
    catalogs: Vec<(String, Arc<dyn Catalog>)>,
}

impl Federation {
    /// Federates `catalogs` (names unique, checked by the configuration).
    pub fn new(catalogs: Vec<(String, Arc<dyn Catalog>)>) -> Federation {
        Federation { catalogs }
    }

    fn catalog(&self, name: &str) -> Option<&Arc<dyn Catalog>> {
        self.catalogs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
    }

    /// The catalog a namespace routes to and the namespace inside it (`None`: the catalog level itself).
    fn route<'a>(
        &'a self,
        namespace: &NamespaceIdent,
    ) -> Option<(&'a str, &'a Arc<dyn Catalog>, Option<NamespaceIdent>)> {
        let levels = namespace.as_ref();
        let (first, rest) = levels.split_first()?;
        let (name, catalog) = self.catalogs.iter().find(|(n, _)| n == first)?;
        let inner = if rest.is_empty() {
            None
        } else {
            Some(NamespaceIdent::from_vec(rest.to_vec()).ok()?)
        };
        Some((name.as_str(), catalog, inner))
    }

    fn route_table<'a>(
        &'a self,
        table: &TableIdent,
    ) -> Option<(&'a str, &'a Arc<dyn Catalog>, TableIdent)> {
        match self.route(table.namespace())? {
            (name, catalog, Some(ns)) => {
                Some((name, catalog, TableIdent::new(ns, table.name.clone())))
            }
            // A table directly under a catalog's name would be a table without a namespace.
            (_, _, None) => None,
        }
    }
}

fn prefixed(catalog: &str, ns: &NamespaceIdent) -> Result<NamespaceIdent> {
    let mut levels = vec![catalog.to_string()];
    levels.extend(ns.as_ref().iter().cloned());
    NamespaceIdent::from_vec(levels)
}

fn prefixed_table(catalog: &str, table: &TableIdent) -> Result<TableIdent> {
    Ok(TableIdent::new(
        prefixed(catalog, table.namespace())?,
        table.name.clone(),
    ))
}

/// The table as loaded, named as the federation names it.
fn renamed(catalog: &str, table: Table) -> Result<Table> {
    let mut builder = Table::builder()
        .file_io(table.file_io().clone())
        .metadata(table.metadata_ref())
        .identifier(prefixed_table(catalog, table.identifier())?)
        .readonly(table.readonly())
        // The member's own runtime is not readable from outside the crate; loads run on the same runtime.
        .runtime(iceberg::Runtime::try_current()?);
    if let Some(location) = table.metadata_location() {
        builder = builder.metadata_location(location);
    }
    builder.build()
}

fn no_namespace(namespace: &NamespaceIdent) -> Error {
    Error::new(
        ErrorKind::NamespaceNotFound,
        format!("namespace {} does not exist", namespace.join(".")),
    )
}

fn no_table(table: &TableIdent) -> Error {
    Error::new(
        ErrorKind::TableNotFound,
        format!(
            "table {}.{} does not exist",
            table.namespace().join("."),
            table.name
        ),
    )
}

fn catalog_level(namespace: &NamespaceIdent) -> Error {
    Error::new(
        ErrorKind::FeatureUnsupported,
        format!(
            "{} is a catalog, not a namespace inside one",
            namespace.join(".")
        ),
    )
}

#[async_trait]
impl Catalog for Federation {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>> {
        let Some(parent) = parent else {
            return Ok(self
                .catalogs
                .iter()
                .map(|(name, _)| NamespaceIdent::new(name.clone()))
                .collect());
        };
        let (name, catalog, inner) = self.route(parent).ok_or_else(|| no_namespace(parent))?;
        catalog
            .list_namespaces(inner.as_ref())
            .await?
            .iter()
            .map(|ns| prefixed(name, ns))
            .collect()
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        match self.route(namespace) {
            Some((name, catalog, Some(inner))) => {
                let created = catalog.create_namespace(&inner, properties).await?;
                Ok(Namespace::with_properties(
                    prefixed(name, created.name())?,
                    created.properties().clone(),
                ))
            }
            Some((_, _, None)) => Err(catalog_level(namespace)),
            None => Err(no_namespace(namespace)),
        }
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        match self.route(namespace) {
            Some((name, catalog, Some(inner))) => {
                let found = catalog.get_namespace(&inner).await?;
                Ok(Namespace::with_properties(
                    prefixed(name, found.name())?,
                    found.properties().clone(),
                ))
            }
            Some((_, _, None)) => Ok(Namespace::new(namespace.clone())),
            None => Err(no_namespace(namespace)),
        }
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        match self.route(namespace) {
            Some((_, catalog, Some(inner))) => catalog.namespace_exists(&inner).await,
            Some((_, _, None)) => Ok(true),
            None => Ok(false),
        }
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<()> {
        match self.route(namespace) {
            Some((_, catalog, Some(inner))) => catalog.update_namespace(&inner, properties).await,
            Some((_, _, None)) => Err(catalog_level(namespace)),
            None => Err(no_namespace(namespace)),
        }
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        match self.route(namespace) {
            Some((_, catalog, Some(inner))) => catalog.drop_namespace(&inner).await,
            Some((_, _, None)) => Err(catalog_level(namespace)),
            None => Err(no_namespace(namespace)),
        }
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        match self.route(namespace) {
            Some((name, catalog, Some(inner))) => catalog
                .list_tables(&inner)
                .await?
                .iter()
                .map(|t| prefixed_table(name, t))
                .collect(),
            Some((_, _, None)) => Ok(Vec::new()),
            None => Err(no_namespace(namespace)),
        }
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table> {
        match self.route(namespace) {
            Some((name, catalog, Some(inner))) => {
                renamed(name, catalog.create_table(&inner, creation).await?)
            }
            Some((_, _, None)) => Err(catalog_level(namespace)),
            None => Err(no_namespace(namespace)),
        }
    }

    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        let (name, catalog, inner) = self.route_table(table).ok_or_else(|| no_table(table))?;
        renamed(name, catalog.load_table(&inner).await?)
    }

    async fn drop_table(&self, table: &TableIdent) -> Result<()> {
        let (_, catalog, inner) = self.route_table(table).ok_or_else(|| no_table(table))?;
        catalog.drop_table(&inner).await
    }

    async fn purge_table(&self, table: &TableIdent) -> Result<()> {
        let (_, catalog, inner) = self.route_table(table).ok_or_else(|| no_table(table))?;
        catalog.purge_table(&inner).await
    }

    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        match self.route_table(table) {
            Some((_, catalog, inner)) => catalog.table_exists(&inner).await,
            None => Ok(false),
        }
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        let (from, catalog, src_inner) = self.route_table(src).ok_or_else(|| no_table(src))?;
        let (to, _, dest_inner) = self
            .route_table(dest)
            .ok_or_else(|| no_namespace(dest.namespace()))?;
        if from != to {
            return Err(Error::new(
                ErrorKind::FeatureUnsupported,
                "a table cannot be renamed from one catalog into another",
            ));
        }
        catalog.rename_table(&src_inner, &dest_inner).await
    }

    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> Result<Table> {
        let (name, catalog, inner) = self
            .route_table(table)
            .ok_or_else(|| no_namespace(table.namespace()))?;
        renamed(
            name,
            catalog.register_table(&inner, metadata_location).await?,
        )
    }

    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        // A commit's table name cannot be rewritten from outside the iceberg crate; writers commit to the
        // catalog itself.
        Err(Error::new(
            ErrorKind::FeatureUnsupported,
            format!(
                "commits to {} go to its catalog directly, not through the federation",
                commit.identifier()
            ),
        ))
    }
}

impl Federation {
    /// The catalog named `name`, for callers that write (they commit to the catalog itself).
    pub fn member(&self, name: &str) -> Option<Arc<dyn Catalog>> {
        self.catalog(name).cloned()
    }
}
