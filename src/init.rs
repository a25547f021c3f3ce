//! `parley init` for a lakehouse Parley did not create: a starter policy and, per table, a draft ODCS contract
//! generated from its Iceberg schema, so the default local principal discovers every table and reads its
//! contract at once while queries wait for an owner's classification.
//!
//! Invariant: it only reads the catalogs (list and load); it never overwrites a contract or policy file that
//! exists, so running it again adds drafts for new tables and changes nothing else.

use std::path::PathBuf;

use anyhow::{Context, Result};
use iceberg::spec::{NestedField, Type};
use serde_json::{Value, json};

use crate::catalog::{Lakehouse, TableName};
use crate::config::Config;
use crate::contracts::ContractStore;
use crate::demo::DataDir;

/// The starter policy, `(file name under policy/, text)`; `entities.json` is written for the configured
/// principal by [`starter_entities`].
const STARTER_POLICY: [(&str, &str); 2] = [
    (
        "policy.cedar",
        include_str!("../examples/starter-policy/policy.cedar"),
    ),
    (
        "purposes.yaml",
        include_str!("../examples/policy/purposes.yaml"),
    ),
];

/// The group draft contracts name as owner, and the user `init` puts in it.
const OWNER_GROUP: &str = "data-owners";
const OWNER_USER: &str = "data-owner";

/// What [`prepare_existing`] did.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Tables found in the catalogs.
    pub tables: usize,
    /// Draft contracts written, by table.
    pub drafted: Vec<(TableName, PathBuf)>,
    /// Tables that already had a contract (left alone).
    pub had_contract: usize,
    /// Tables whose metadata could not be loaded, with the reason (no draft written).
    pub unreadable: Vec<(TableName, String)>,
    /// Policy files written (none when a policy was there).
    pub policy_files: Vec<PathBuf>,
}

/// Prepares the data dir for the catalogs `config` names (or the SQL catalog already in the data dir): a
/// starter policy when there is none, and a draft contract for every table that has none.
pub async fn prepare_existing(config: &Config, dir: &DataDir) -> Result<Prepared> {
    std::fs::create_dir_all(&dir.root)
        .with_context(|| format!("cannot create data dir {}", dir.root.display()))?;
    let opened = crate::catalog::open::open(config, dir)
        .await
        .context("cannot open the Iceberg catalog")?;
    for (settings, catalog) in &opened.members {
        crate::catalog::open::probe(settings, catalog.as_ref())
            .await
            .map_err(anyhow::Error::msg)?;
    }
    // Only once every catalog answered: a wrong URL or credential writes nothing.
    let mut prepared = Prepared {
        policy_files: write_starter_policy(config, dir)?,
        ..Prepared::default()
    };
    let lakehouse = Lakehouse::new(opened.catalog, ContractStore::load(&dir.contracts()));
    let tables = lakehouse
        .list_tables()
        .await
        .context("cannot list the catalog's tables")?;
    prepared.tables = tables.len();
    for table in tables.iter() {
        if lakehouse.contract(table).is_some() {
            prepared.had_contract += 1;
            continue;
        }
        let path = contract_path(dir, table);
        if path.exists() {
            // A file is there but does not load (the server logs why): never overwrite an owner's work.
            prepared.had_contract += 1;
            continue;
        }
        let loaded = match lakehouse.load(table).await {
            Ok(t) => t,
            Err(e) => {
                prepared.unreadable.push((table.clone(), e.to_string()));
                continue;
            }
        };
        let yaml = draft_contract(
            table,
            loaded.metadata().current_schema().as_struct().fields(),
        )?;
        std::fs::create_dir_all(path.parent().expect("contract paths have a parent"))?;
        std::fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
        prepared.drafted.push((table.clone(), path));
    }
    Ok(prepared)
}

/// `contracts/<namespace levels>/<table>.yaml`.
fn contract_path(dir: &DataDir, table: &TableName) -> PathBuf {
    let mut path = dir.contracts();
    for level in &table.namespace {
        path.push(level);
    }
    path.push(format!("{}.yaml", table.name));
    path
}

/// Writes the starter policy files that are missing; none when `policy.cedar` exists (a policy is there).
fn write_starter_policy(config: &Config, dir: &DataDir) -> Result<Vec<PathBuf>> {
    let policy_dir = dir.policy();
    if policy_dir.join("policy.cedar").exists() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(&policy_dir)?;
    let mut written = Vec::new();
    let entities = starter_entities(&config.principal);
    for (name, text) in STARTER_POLICY
        .iter()
        .map(|(n, t)| (*n, t.to_string()))
        .chain([("entities.json", entities)])
    {
        let path = policy_dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// The starter directory: `principal` (the one `serve` acts as without `--principal`) is an analyst; a
/// `data-owner` user owns the drafts.
fn starter_entities(principal: &str) -> String {
    let group =
        |id: &str| json!({"uid": {"type": "Parley::Group", "id": id}, "attrs": {}, "parents": []});
    let user = |id: &str, groups: &[&str]| {
        json!({
            "uid": {"type": "Parley::User", "id": id},
            "attrs": {},
            "parents": groups.iter().map(|g| json!({"type": "Parley::Group", "id": g})).collect::<Vec<_>>(),
        })
    };
    let mut entities = vec![
        group("analysts"),
        group(OWNER_GROUP),
        user(OWNER_USER, &[OWNER_GROUP, "analysts"]),
    ];
    if principal != OWNER_USER {
        entities.push(user(principal, &["analysts"]));
    }
    serde_json::to_string_pretty(&entities).expect("entities serialize")
}

/// A draft ODCS v3.2.0 contract for `table` from its Iceberg columns: logical types mapped from Iceberg's,
/// the Iceberg type as `physicalType`, `required` and docs carried over, and no column classified — the table
/// counts as holding personal data until an owner classifies its columns.
pub fn draft_contract(table: &TableName, fields: &[std::sync::Arc<NestedField>]) -> Result<String> {
    let contract = json!({
        "apiVersion": "v3.2.0",
        "kind": "DataContract",
        "id": format!("urn:parley:draft:{table}"),
        "name": table.name,
        "version": "0.1.0",
        "status": "draft",
        "description": {
            "purpose": format!(
                "Draft written by `parley init` from the Iceberg schema of {table}. An owner completes it: \
                 classify every column, state the purposes it may serve, then set status to active."
            ),
        },
        "schema": [{
            "name": table.name,
            "physicalName": table.to_string(),
            "physicalType": "table",
            "properties": fields.iter().map(|f| property(f)).collect::<Vec<_>>(),
        }],
        "team": {
            "name": OWNER_GROUP,
            "members": [{"username": OWNER_USER, "role": "owner"}],
        },
        "customProperties": [
            {"property": "allowedPurposes", "value": []},
            {"property": "prohibitedPurposes", "value": []},
        ],
    });
    let mut yaml = String::from(
        "# Draft data contract generated by `parley init` (ODCS v3.2.0). Columns are unclassified: Parley treats\n\
         # them as personal data until an owner sets `classification` on each (e.g. public, internal, pii).\n",
    );
    yaml.push_str(&serde_yaml_ng::to_string(&contract)?);
    Ok(yaml)
}

/// One ODCS schema property for an Iceberg field (nested for structs, lists and maps).
fn property(field: &NestedField) -> Value {
    let mut p = json!({
        "name": field.name,
        "logicalType": crate::compat::logical_type(&field.field_type),
        "physicalType": field.field_type.to_string(),
        "required": field.required,
    });
    if let Some(doc) = &field.doc {
        p["description"] = json!(doc);
    }
    match field.field_type.as_ref() {
        Type::Struct(s) => {
            p["properties"] = json!(s.fields().iter().map(|f| property(f)).collect::<Vec<_>>());
        }
        Type::List(list) => {
            p["items"] = property(&list.element_field);
        }
        _ => {}
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::spec::{ListType, PrimitiveType, StructType};
    use std::sync::Arc;

    #[test]
    fn a_draft_maps_every_iceberg_type_and_loads_as_a_contract() {
        let fields: Vec<Arc<NestedField>> = vec![
            NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
            NestedField::optional(2, "flag", Type::Primitive(PrimitiveType::Boolean)).into(),
            NestedField::optional(3, "n", Type::Primitive(PrimitiveType::Int)).into(),
            NestedField::optional(4, "f", Type::Primitive(PrimitiveType::Float)).into(),
            NestedField::optional(
                5,
                "amount",
                Type::Primitive(PrimitiveType::Decimal {
                    precision: 12,
                    scale: 2,
                }),
            )
            .with_doc("Order total")
            .into(),
            NestedField::optional(6, "day", Type::Primitive(PrimitiveType::Date)).into(),
            NestedField::optional(7, "at", Type::Primitive(PrimitiveType::Timestamptz)).into(),
            NestedField::optional(8, "t", Type::Primitive(PrimitiveType::Time)).into(),
            NestedField::optional(9, "u", Type::Primitive(PrimitiveType::Uuid)).into(),
            NestedField::optional(10, "b", Type::Primitive(PrimitiveType::Binary)).into(),
            NestedField::optional(
                11,
                "address",
                Type::Struct(StructType::new(vec![
                    NestedField::optional(12, "city", Type::Primitive(PrimitiveType::String))
                        .into(),
                ])),
            )
            .into(),
            NestedField::optional(
                13,
                "tags",
                Type::List(ListType::new(
                    NestedField::list_element(14, Type::Primitive(PrimitiveType::String), false)
                        .into(),
                )),
            )
            .into(),
        ];
        let table = TableName::parse("lake.sales.orders").unwrap();
        let yaml = draft_contract(&table, &fields).unwrap();
        let contract = crate::contracts::parse(&yaml, std::path::Path::new("orders.yaml"))
            .unwrap_or_else(|e| panic!("the draft must load as a contract: {e}\n{yaml}"));
        assert_eq!(
            contract.schema[0].physical_name.as_deref(),
            Some("lake.sales.orders")
        );
        let kinds: Vec<(String, String)> = contract
            .columns()
            .map(|p| (p.name.clone(), p.logical_type.clone().unwrap_or_default()))
            .collect();
        let expect = [
            ("id", "integer"),
            ("flag", "boolean"),
            ("n", "integer"),
            ("f", "number"),
            ("amount", "number"),
            ("day", "date"),
            ("at", "timestamp"),
            ("t", "time"),
            ("u", "string"),
            ("b", "string"),
            ("address", "object"),
            ("tags", "array"),
        ];
        assert_eq!(
            kinds,
            expect
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        );
        // Unclassified: the table counts as holding personal data, and nobody's query is allowed by the
        // starter policy's non-PII rule until an owner classifies it.
        let facts = crate::contracts::table_facts("lake.sales", "orders", Some(&contract));
        assert!(facts.contains_pii);
        assert_eq!(facts.owner, OWNER_GROUP);
        assert!(
            yaml.contains("physicalType: decimal(12, 2)") || yaml.contains("decimal(12,2)"),
            "{yaml}"
        );
        assert!(yaml.contains("Order total"));
    }

    #[test]
    fn the_starter_policy_loads_and_lets_the_principal_discover_but_not_query_drafts() {
        use crate::identity::{Directory, Principal};
        use crate::policy::{Action, CedarPolicy, PolicyBackend, RequestContext, Resource};
        let entities = starter_entities("analyst");
        let policy = CedarPolicy::from_texts(
            STARTER_POLICY[0].1,
            std::path::Path::new("policy.cedar"),
            &entities,
            std::path::Path::new("entities.json"),
        )
        .unwrap();
        let table = TableName::parse("lake.sales.orders").unwrap();
        let yaml = draft_contract(
            &table,
            &[NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into()],
        )
        .unwrap();
        let contract = crate::contracts::parse(&yaml, std::path::Path::new("x.yaml")).unwrap();
        let facts = crate::contracts::table_facts("lake.sales", "orders", Some(&contract));
        let resource = Resource::Table(facts);
        let analyst = Principal::new("analyst", policy.groups_of("analyst"));
        let decide = |who: &Principal, action| {
            policy
                .authorize(who, action, &resource, &RequestContext::default())
                .allowed()
        };
        assert!(decide(&analyst, Action::Discover));
        assert!(decide(&analyst, Action::ReadContract));
        assert!(!decide(&analyst, Action::Query));
        let owner = Principal::new(OWNER_USER, policy.groups_of(OWNER_USER));
        assert!(decide(&owner, Action::Query));
    }
}
