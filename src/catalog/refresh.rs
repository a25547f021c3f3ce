//! A REST catalog whose OAuth2 token is renewed when the catalog stops accepting it.
//!
//! iceberg-catalog-rest exchanges the client credential (`credential = "id:secret"`) for a token once and sends
//! it until the process ends; a catalog's tokens expire (an hour is common), after which every call answers
//! 401. [`Refreshing`] asks the token endpoint for a new token and repeats the call once when a read is refused
//! with 401. Commits are not repeated (they are not idempotent); their 401 still renews the token for the next
//! call. A static `token` is never renewed: a 401 then says to check it.

use std::collections::HashMap;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{Catalog, Namespace, NamespaceIdent, Result, TableCommit, TableCreation, TableIdent};
use iceberg_catalog_rest::RestCatalog;

/// A REST catalog authenticated by client credentials, its token renewed on 401.
#[derive(Debug)]
pub struct Refreshing {
    inner: RestCatalog,
}

impl Refreshing {
    pub fn new(inner: RestCatalog) -> Refreshing {
        Refreshing { inner }
    }

    /// Whether `e` is the catalog refusing the token, and a new one was obtained.
    async fn renewed(&self, e: &iceberg::Error) -> bool {
        if super::http_status(e) != Some(401) {
            return false;
        }
        match self.inner.regenerate_token().await {
            Ok(()) => {
                tracing::info!("the REST catalog refused its token (401): obtained a new one");
                true
            }
            Err(err) => {
                tracing::warn!(
                    "the REST catalog refused its token (401) and a new one was refused: {err}"
                );
                false
            }
        }
    }
}

/// Calls `$call` on the inner catalog; on a 401 renews the token and calls it once more.
macro_rules! once_more {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {{
        match $self.inner.$method($($arg),*).await {
            Err(e) if $self.renewed(&e).await => $self.inner.$method($($arg),*).await,
            other => other,
        }
    }};
}

#[async_trait]
impl Catalog for Refreshing {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>> {
        once_more!(self.list_namespaces(parent))
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        let result = self
            .inner
            .create_namespace(namespace, properties.clone())
            .await;
        match result {
            Err(e) if self.renewed(&e).await => {
                self.inner.create_namespace(namespace, properties).await
            }
            other => other,
        }
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        once_more!(self.get_namespace(namespace))
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        once_more!(self.namespace_exists(namespace))
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.inner.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        once_more!(self.list_tables(namespace))
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table> {
        self.inner.create_table(namespace, creation).await
    }

    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        once_more!(self.load_table(table))
    }

    async fn drop_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.drop_table(table).await
    }

    async fn purge_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.purge_table(table).await
    }

    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        once_more!(self.table_exists(table))
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        self.inner.rename_table(src, dest).await
    }

    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }

    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        let result = self.inner.update_table(commit).await;
        if let Err(e) = &result {
            // Not repeated (a commit is not idempotent); the next call has a fresh token.
            self.renewed(e).await;
        }
        result
    }
}
