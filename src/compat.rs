//! Schema compatibility: what a change to a table's schema does to the people who read it, by Iceberg's own rules
//! (columns are field ids; the type promotions the Iceberg spec allows), and whether a table still keeps the
//! promises of its data contract.
//!
//! Pure functions over `iceberg::spec::Schema` and the contract: no I/O. The commit check and contract
//! versions build on them; `describe_table` and `list_tables` use [`contract_drift`] to flag a table whose schema
//! no longer keeps its contract (a change made behind the contract's back).

use iceberg::spec::{PrimitiveType, Schema, Type};
use serde::Serialize;

use crate::contracts::Contract;

/// What a change means for consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Impact {
    /// Queries written against the old schema may fail or change meaning.
    Breaking,
    /// Queries written against the old schema keep working.
    Compatible,
}

/// One change between two schemas, or one broken contract promise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct SchemaChange {
    /// Breaking or compatible.
    pub impact: Impact,
    /// The column (dotted path for nested fields), as the old schema (or the contract) names it.
    pub column: String,
    /// What changed, in words.
    pub change: String,
}

/// Changes in words for messages and notices: `column: change; ...`.
pub fn describe<'a>(changes: impl IntoIterator<Item = &'a SchemaChange>) -> String {
    changes
        .into_iter()
        .map(|c| format!("{}: {}", c.column, c.change))
        .collect::<Vec<_>>()
        .join("; ")
}

fn change(impact: Impact, column: &str, text: String) -> SchemaChange {
    SchemaChange {
        impact,
        column: column.to_string(),
        change: text,
    }
}

/// Whether Iceberg lets a column of type `from` become `to` in place (the spec's valid type promotions: int to
/// long, float to double, decimal(P, S) to decimal(P', S) with P' > P, and in format v3 date to timestamp).
pub fn promotes(from: &PrimitiveType, to: &PrimitiveType) -> bool {
    use PrimitiveType as P;
    match (from, to) {
        (P::Int, P::Long) | (P::Float, P::Double) => true,
        (
            P::Decimal {
                precision: p1,
                scale: s1,
            },
            P::Decimal {
                precision: p2,
                scale: s2,
            },
        ) => s1 == s2 && p2 > p1,
        (P::Date, P::Timestamp | P::TimestampNs) => true,
        _ => false,
    }
}

/// The changes from `old` to `new`, matched by field id (a renamed column is the same column renamed, a dropped
/// and re-added one is a different column), sorted by column.
pub fn schema_changes(old: &Schema, new: &Schema) -> Vec<SchemaChange> {
    let mut out = Vec::new();
    let old_names = old.field_id_to_name_map();
    let mut ids: Vec<_> = old_names.keys().copied().collect();
    ids.sort();
    for id in ids {
        let name = &old_names[&id];
        let (Some(before), after) = (old.field_by_id(id), new.field_by_id(id)) else {
            continue;
        };
        let Some(after) = after else {
            // A nested field of a dropped column goes with it: say it once, for the outermost.
            let parent_dropped = name
                .rsplit_once('.')
                .and_then(|(parent, _)| old.field_id_by_name(parent))
                .is_some_and(|p| new.field_by_id(p).is_none());
            if !parent_dropped {
                out.push(change(Impact::Breaking, name, "dropped".to_string()));
            }
            continue;
        };
        if let Some(now) = new.name_by_field_id(id)
            && now != name
        {
            out.push(change(Impact::Breaking, name, format!("renamed to {now}")));
        }
        match (&*before.field_type, &*after.field_type) {
            (Type::Primitive(a), Type::Primitive(b)) if a == b => {}
            (Type::Primitive(a), Type::Primitive(b)) if promotes(a, b) => out.push(change(
                Impact::Compatible,
                name,
                format!("type widened from {a} to {b}"),
            )),
            (Type::Primitive(a), Type::Primitive(b)) => out.push(change(
                Impact::Breaking,
                name,
                format!(
                    "type changed from {a} to {b}, which Iceberg does not allow as a promotion"
                ),
            )),
            // Nested types are compared field by field (their fields have ids of their own).
            (Type::Struct(_), Type::Struct(_))
            | (Type::List(_), Type::List(_))
            | (Type::Map(_), Type::Map(_)) => {}
            (a, b) => out.push(change(
                Impact::Breaking,
                name,
                format!("type changed from {a} to {b}"),
            )),
        }
        match (before.required, after.required) {
            (false, true) => out.push(change(
                Impact::Breaking,
                name,
                "became required (optional before)".to_string(),
            )),
            (true, false) => out.push(change(
                Impact::Compatible,
                name,
                "became optional: it may now hold nulls".to_string(),
            )),
            _ => {}
        }
        if before.doc != after.doc {
            out.push(change(
                Impact::Compatible,
                name,
                "documentation changed".to_string(),
            ));
        }
    }
    let new_names = new.field_id_to_name_map();
    let mut added: Vec<_> = new_names
        .iter()
        .filter(|(id, _)| old.field_by_id(**id).is_none())
        .collect();
    added.sort();
    for (id, name) in added {
        let Some(field) = new.field_by_id(*id) else {
            continue;
        };
        let parent_added = name
            .rsplit_once('.')
            .and_then(|(parent, _)| new.field_id_by_name(parent))
            .is_some_and(|p| old.field_by_id(p).is_none());
        if parent_added {
            continue;
        }
        if field.required && field.initial_default.is_none() {
            out.push(change(
                Impact::Breaking,
                name,
                "added as a required column without a default (older rows have no value)"
                    .to_string(),
            ));
        } else {
            out.push(change(
                Impact::Compatible,
                name,
                format!("added ({})", field.field_type),
            ));
        }
    }
    out.sort_by(|a, b| a.column.cmp(&b.column).then(a.change.cmp(&b.change)));
    out
}

/// How the default partition spec changed from `old` to `new`, by source column: a partition field added or
/// removed (or its transform changed). Compatible: a query's answer never depends on partitioning, only its cost
/// — consumers are told, nothing is refused. Contracts document no access patterns yet that a change could break.
pub fn partition_changes(
    old: &iceberg::spec::TableMetadata,
    new: &iceberg::spec::TableMetadata,
) -> Vec<SchemaChange> {
    let fields = |m: &iceberg::spec::TableMetadata| -> Vec<(String, String)> {
        m.default_partition_spec()
            .fields()
            .iter()
            .map(|f| {
                let column = m
                    .current_schema()
                    .name_by_field_id(f.source_id)
                    .map(str::to_string)
                    .or_else(|| {
                        old.current_schema()
                            .name_by_field_id(f.source_id)
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| format!("field {}", f.source_id));
                (column, f.transform.to_string())
            })
            .collect()
    };
    let (before, after) = (fields(old), fields(new));
    let mut out = Vec::new();
    for (column, transform) in &before {
        if !after.contains(&(column.clone(), transform.clone())) {
            out.push(change(
                Impact::Compatible,
                column,
                format!("no longer partitions the table ({transform}); queries filtering on it may read more"),
            ));
        }
    }
    for (column, transform) in &after {
        if !before.contains(&(column.clone(), transform.clone())) {
            out.push(change(
                Impact::Compatible,
                column,
                format!("now partitions the table ({transform})"),
            ));
        }
    }
    out
}

/// ODCS logical type of an Iceberg type.
pub fn logical_type(t: &Type) -> &'static str {
    match t {
        Type::Primitive(p) => match p {
            PrimitiveType::Boolean => "boolean",
            PrimitiveType::Int | PrimitiveType::Long => "integer",
            PrimitiveType::Float | PrimitiveType::Double | PrimitiveType::Decimal { .. } => {
                "number"
            }
            PrimitiveType::Date => "date",
            PrimitiveType::Time => "time",
            PrimitiveType::Timestamp
            | PrimitiveType::Timestamptz
            | PrimitiveType::TimestampNs
            | PrimitiveType::TimestamptzNs => "timestamp",
            PrimitiveType::String
            | PrimitiveType::Uuid
            | PrimitiveType::Fixed(_)
            | PrimitiveType::Binary => "string",
        },
        Type::Struct(_) | Type::Map(_) => "object",
        Type::List(_) => "array",
    }
}

/// The contract's promises `schema` no longer keeps: a column it names that the table lacks, a column whose
/// logical type is not the contract's, a column the contract says is never null that the table lets be null.
/// Columns the contract does not name are not its business.
pub fn contract_drift(contract: &Contract, schema: &Schema) -> Vec<SchemaChange> {
    let mut out = Vec::new();
    for promised in contract.columns() {
        let Some(field) = schema.as_struct().field_by_name(&promised.name) else {
            out.push(change(
                Impact::Breaking,
                &promised.name,
                "the contract promises this column; the table no longer has it".to_string(),
            ));
            continue;
        };
        let actual = logical_type(&field.field_type);
        if let Some(expected) = &promised.logical_type
            && !expected.eq_ignore_ascii_case(actual)
        {
            out.push(change(
                Impact::Breaking,
                &promised.name,
                format!(
                    "the contract promises logical type {expected}; the table has {actual} ({})",
                    field.field_type
                ),
            ));
        }
        if promised.required && !field.required {
            out.push(change(
                Impact::Breaking,
                &promised.name,
                "the contract promises it is never null; the table lets it be null".to_string(),
            ));
        }
    }
    out
}

/// What a new version of a contract changes for its consumers, column by column: a column removed, its logical
/// type changed, made never-null, or its classification changed is breaking (datacontract-cli's former rule table,
/// the reference API-NOTES names); a column added or a classification first given is compatible.
pub fn contract_changes(old: &Contract, new: &Contract) -> Vec<SchemaChange> {
    let mut out = Vec::new();
    for before in old.columns() {
        let Some(after) = new.column(&before.name) else {
            out.push(change(
                Impact::Breaking,
                &before.name,
                "removed from the contract".to_string(),
            ));
            continue;
        };
        if before.logical_type.as_deref().map(str::to_lowercase)
            != after.logical_type.as_deref().map(str::to_lowercase)
        {
            out.push(change(
                Impact::Breaking,
                &before.name,
                format!(
                    "logical type changed from {} to {}",
                    before.logical_type.as_deref().unwrap_or("none"),
                    after.logical_type.as_deref().unwrap_or("none")
                ),
            ));
        }
        if !before.required && after.required {
            out.push(change(
                Impact::Breaking,
                &before.name,
                "now promised never null (writers must change)".to_string(),
            ));
        }
        if before.required && !after.required {
            out.push(change(
                Impact::Breaking,
                &before.name,
                "no longer promised never null (readers may see nulls)".to_string(),
            ));
        }
        match (&before.classification, &after.classification) {
            (Some(a), Some(b)) if !a.eq_ignore_ascii_case(b) => out.push(change(
                Impact::Breaking,
                &before.name,
                format!("classification changed from {a} to {b}"),
            )),
            (Some(a), None) => out.push(change(
                Impact::Breaking,
                &before.name,
                format!("classification {a} removed"),
            )),
            (None, Some(b)) => out.push(change(
                Impact::Compatible,
                &before.name,
                format!("classified {b}"),
            )),
            _ => {}
        }
    }
    for after in new.columns() {
        if old.column(&after.name).is_none() {
            out.push(change(
                Impact::Compatible,
                &after.name,
                format!(
                    "added ({})",
                    after.logical_type.as_deref().unwrap_or("no logical type")
                ),
            ));
        }
    }
    out
}

/// The major part of a semantic version (`2` of `2.1.0`), if it has one.
pub fn major_version(version: &str) -> Option<u64> {
    version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use iceberg::spec::{NestedField, NestedFieldRef, StructType};

    use super::*;

    fn schema(fields: Vec<NestedField>) -> Schema {
        Schema::builder()
            .with_fields(
                fields
                    .into_iter()
                    .map(Arc::new)
                    .collect::<Vec<NestedFieldRef>>(),
            )
            .build()
            .unwrap()
    }

    fn p(t: PrimitiveType) -> Type {
        Type::Primitive(t)
    }

    fn dec(precision: u32, scale: u32) -> PrimitiveType {
        PrimitiveType::Decimal { precision, scale }
    }

    /// Table-driven against the Iceberg spec's schema evolution rules: each case changes one field `x` (id 2)
    /// next to an untouched `id` (id 1), and names the impact and the words the change is reported with.
    #[test]
    fn changes_are_classified_by_icebergs_rules() {
        use PrimitiveType as P;
        let id = || NestedField::required(1, "id", p(P::Long));
        /// (case, the field before, after (None: dropped), the expected (impact, words) of each change).
        type Case = (
            &'static str,
            NestedField,
            Option<NestedField>,
            Vec<(Impact, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            (
                "unchanged",
                NestedField::optional(2, "x", p(P::Int)),
                Some(NestedField::optional(2, "x", p(P::Int))),
                vec![],
            ),
            (
                "int to long",
                NestedField::optional(2, "x", p(P::Int)),
                Some(NestedField::optional(2, "x", p(P::Long))),
                vec![(Impact::Compatible, "widened")],
            ),
            (
                "float to double",
                NestedField::optional(2, "x", p(P::Float)),
                Some(NestedField::optional(2, "x", p(P::Double))),
                vec![(Impact::Compatible, "widened")],
            ),
            (
                "decimal wider",
                NestedField::optional(2, "x", p(dec(9, 2))),
                Some(NestedField::optional(2, "x", p(dec(18, 2)))),
                vec![(Impact::Compatible, "widened")],
            ),
            (
                "decimal narrower",
                NestedField::optional(2, "x", p(dec(18, 2))),
                Some(NestedField::optional(2, "x", p(dec(9, 2)))),
                vec![(Impact::Breaking, "does not allow")],
            ),
            (
                "decimal scale",
                NestedField::optional(2, "x", p(dec(9, 2))),
                Some(NestedField::optional(2, "x", p(dec(10, 3)))),
                vec![(Impact::Breaking, "does not allow")],
            ),
            (
                "long to int",
                NestedField::optional(2, "x", p(P::Long)),
                Some(NestedField::optional(2, "x", p(P::Int))),
                vec![(Impact::Breaking, "does not allow")],
            ),
            (
                "double to float",
                NestedField::optional(2, "x", p(P::Double)),
                Some(NestedField::optional(2, "x", p(P::Float))),
                vec![(Impact::Breaking, "does not allow")],
            ),
            (
                "int to string",
                NestedField::optional(2, "x", p(P::Int)),
                Some(NestedField::optional(2, "x", p(P::String))),
                vec![(Impact::Breaking, "does not allow")],
            ),
            (
                "date to timestamp (v3)",
                NestedField::optional(2, "x", p(P::Date)),
                Some(NestedField::optional(2, "x", p(P::Timestamp))),
                vec![(Impact::Compatible, "widened")],
            ),
            (
                "struct to string",
                NestedField::optional(
                    2,
                    "x",
                    Type::Struct(StructType::new(vec![Arc::new(NestedField::optional(
                        3,
                        "a",
                        p(P::Int),
                    ))])),
                ),
                Some(NestedField::optional(2, "x", p(P::String))),
                vec![
                    (Impact::Breaking, "dropped"),
                    (Impact::Breaking, "type changed"),
                ],
            ),
            (
                "optional to required",
                NestedField::optional(2, "x", p(P::Int)),
                Some(NestedField::required(2, "x", p(P::Int))),
                vec![(Impact::Breaking, "became required")],
            ),
            (
                "required to optional",
                NestedField::required(2, "x", p(P::Int)),
                Some(NestedField::optional(2, "x", p(P::Int))),
                vec![(Impact::Compatible, "may now hold nulls")],
            ),
            (
                "renamed",
                NestedField::optional(2, "x", p(P::Int)),
                Some(NestedField::optional(2, "y", p(P::Int))),
                vec![(Impact::Breaking, "renamed to y")],
            ),
            (
                "dropped",
                NestedField::optional(2, "x", p(P::Int)),
                None,
                vec![(Impact::Breaking, "dropped")],
            ),
            (
                "dropped and re-added",
                NestedField::optional(2, "x", p(P::Int)),
                Some(NestedField::optional(3, "x", p(P::Int))),
                vec![(Impact::Compatible, "added"), (Impact::Breaking, "dropped")],
            ),
            (
                "doc",
                NestedField::optional(2, "x", p(P::Int)),
                Some(NestedField::optional(2, "x", p(P::Int)).with_doc("now documented")),
                vec![(Impact::Compatible, "documentation")],
            ),
        ];
        for (case, before, after, expect) in cases {
            let old = schema(vec![id(), before]);
            let new = schema(std::iter::once(id()).chain(after).collect());
            let got = schema_changes(&old, &new);
            let mut got: Vec<(Impact, String)> =
                got.iter().map(|c| (c.impact, c.change.clone())).collect();
            got.sort_by(|a, b| a.1.cmp(&b.1));
            let mut expect = expect;
            expect.sort_by(|a, b| a.1.cmp(b.1));
            assert_eq!(got.len(), expect.len(), "{case}: {got:?}");
            for ((impact, text), (want_impact, want)) in got.iter().zip(&expect) {
                assert_eq!(impact, want_impact, "{case}: {text}");
                assert!(text.contains(want), "{case}: {text:?} should say {want:?}");
            }
        }
        // Added columns: optional is compatible; required without a default breaks older rows.
        let old = schema(vec![id()]);
        let new = schema(vec![
            id(),
            NestedField::optional(5, "o", p(P::String)),
            NestedField::required(6, "r", p(P::String)),
        ]);
        let got = schema_changes(&old, &new);
        assert_eq!(
            got.iter()
                .map(|c| (c.column.as_str(), c.impact))
                .collect::<Vec<_>>(),
            [("o", Impact::Compatible), ("r", Impact::Breaking)]
        );
    }

    #[test]
    fn contract_versions_are_diffed_column_by_column() {
        let yaml = include_str!("../examples/contracts/sales/products.yaml");
        let old = crate::contracts::parse(yaml, std::path::Path::new("a.yaml")).unwrap();
        assert_eq!(contract_changes(&old, &old), []);
        let edited = yaml
            .replace(
                "      - name: in_stock\n        logicalType: boolean",
                "      - name: in_stock\n        logicalType: string",
            )
            .replacen(
                "        classification: public\n        description: Product name.",
                "        classification: restricted\n        description: Product name.",
                1,
            );
        let edited = edited.replace(
            "      - name: launched_on\n        logicalType: date\n        physicalType: date\n        required: true\n        classification: public\n        description: Date the product was launched.\n",
            "      - name: weight_kg\n        logicalType: number\n        physicalType: double\n",
        );
        let new = crate::contracts::parse(&edited, std::path::Path::new("b.yaml")).unwrap();
        let got: Vec<(String, Impact)> = contract_changes(&old, &new)
            .into_iter()
            .map(|c| (format!("{}: {}", c.column, c.change), c.impact))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "name: classification changed from public to restricted".to_string(),
                    Impact::Breaking
                ),
                (
                    "in_stock: logical type changed from boolean to string".to_string(),
                    Impact::Breaking
                ),
                (
                    "launched_on: removed from the contract".to_string(),
                    Impact::Breaking
                ),
                ("weight_kg: added (number)".to_string(), Impact::Compatible),
            ]
        );
        assert_eq!(major_version("2.0.0"), Some(2));
        assert_eq!(major_version("v3.1"), Some(3));
        assert_eq!(major_version("draft"), None);
    }

    #[test]
    fn a_schema_that_left_its_contract_is_named_column_by_column() {
        let yaml = include_str!("../examples/contracts/sales/products.yaml");
        let contract =
            crate::contracts::parse(yaml, std::path::Path::new("products.yaml")).unwrap();
        use PrimitiveType as P;
        let kept = schema(vec![
            NestedField::required(1, "product_id", p(P::Int)),
            NestedField::required(2, "sku", p(P::String)),
            NestedField::required(3, "name", p(P::String)),
            NestedField::required(4, "category", p(P::String)),
            NestedField::required(5, "unit_price", p(dec(10, 2))),
            NestedField::required(6, "in_stock", p(P::Boolean)),
            NestedField::required(7, "launched_on", p(P::Date)),
            NestedField::optional(8, "extra", p(P::String)),
        ]);
        assert_eq!(contract_drift(&contract, &kept), []);
        let drifted = schema(vec![
            NestedField::required(1, "product_id", p(P::Int)),
            NestedField::required(2, "sku", p(P::String)),
            NestedField::optional(3, "name", p(P::String)),
            NestedField::required(4, "category", p(P::String)),
            NestedField::required(5, "unit_price", p(P::String)),
            NestedField::required(7, "launched_on", p(P::Date)),
        ]);
        let drift = contract_drift(&contract, &drifted);
        let named: Vec<(&str, bool)> = drift
            .iter()
            .map(|c| (c.column.as_str(), c.impact == Impact::Breaking))
            .collect();
        assert_eq!(
            named,
            [("name", true), ("unit_price", true), ("in_stock", true)],
            "{drift:?}"
        );
        assert!(drift[2].change.contains("no longer has it"));
    }
}
