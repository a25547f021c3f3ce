//! 64-bit ids in JSON as strings. Iceberg snapshot ids use all 64 bits; JavaScript clients (the MCP Inspector,
//! browser hosts) parse JSON numbers as doubles and silently change ids above 2^53, so every snapshot id in a
//! structured result is a decimal string (the text of a reply shows the same digits).

use serde::Serializer;

/// Serializes an id as its decimal string.
pub fn string<S: Serializer>(id: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// Serializes an optional id as its decimal string, or null.
pub fn opt_string<S: Serializer>(id: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.collect_str(id),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize)]
    struct Snap {
        #[serde(serialize_with = "super::string")]
        id: i64,
        #[serde(serialize_with = "super::opt_string")]
        parent: Option<i64>,
        #[serde(serialize_with = "super::opt_string")]
        none: Option<i64>,
    }

    #[test]
    fn ids_above_2_pow_53_survive_a_javascript_parse() {
        let id = 3_258_580_923_970_864_935_i64;
        let json = serde_json::to_string(&Snap {
            id,
            parent: Some(-1),
            none: None,
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"id":"3258580923970864935","parent":"-1","none":null}"#
        );
        // What a JavaScript client would have read from a number: not the id.
        assert_ne!((id as f64) as i64, id);
    }
}
