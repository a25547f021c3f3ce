//! JSON-RPC 2.0 framing helpers shared by the transports: finding the request id in a message that does not
//! parse, so an error answer can name it (and the client stops waiting), without recursing into the message.

use serde_json::Value;

/// JSON-RPC's code for text that is not JSON the server can read.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC's code for JSON that is not a valid request.
pub const INVALID_REQUEST: i64 = -32600;

/// The error answer to `message` (which did not parse or is no valid request), or `None` for a notification,
/// which JSON-RPC answers with nothing.
pub fn error_answer(message: &[u8], code: i64, text: String) -> Option<Value> {
    let id = top_level_id(message);
    if id.is_none() && is_notification(message) {
        return None;
    }
    Some(serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.unwrap_or(Value::Null),
        "error": {"code": code, "message": text},
    }))
}

/// Whether a line that did not parse looks like a notification (a `method` and no `id` at the top level).
pub fn is_notification(line: &[u8]) -> bool {
    top_level_key(line, b"method").is_some() && top_level_key(line, b"id").is_none()
}

/// The request id at the top level of a line that may not parse as a whole: a number or a string value of the
/// object's `id` key, found by a scan that keeps no stack (so any nesting depth is safe).
pub fn top_level_id(line: &[u8]) -> Option<Value> {
    let start = top_level_key(line, b"id")?;
    let rest = &line[start..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    if rest.first() == Some(&b'"') {
        let end = string_end(rest, 0)?;
        return serde_json::from_slice::<String>(&rest[..end])
            .ok()
            .map(Value::String);
    }
    let end = rest
        .iter()
        .position(|b| matches!(b, b',' | b'}') || b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    match serde_json::from_slice::<Value>(&rest[..end]).ok()? {
        n @ Value::Number(_) => Some(n),
        _ => None,
    }
}

/// The offset just after `"key":` at depth 1 of a JSON object, scanning without recursion.
fn top_level_key(line: &[u8], key: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b'"' => {
                let end = string_end(line, i)?;
                if depth == 1 && &line[i + 1..end - 1] == key {
                    let after = &line[end..];
                    let colon = after.iter().position(|b| !b.is_ascii_whitespace())?;
                    if after[colon] == b':' {
                        return Some(end + colon + 1);
                    }
                }
                i = end;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The offset just past the string starting at `line[start] == '"'`.
fn string_end(line: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < line.len() {
        match line[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_found_at_the_top_level_of_lines_that_do_not_parse() {
        let deep = format!(
            "{{\"jsonrpc\":\"2.0\",\"method\":\"tools/call\",\"params\":{{\"a\":{}1{}}},\"id\":7}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        for (line, id) in [
            (deep.as_str(), Some(json!(7))),
            (r#"{"id": "a\"b", "x": 1e400}"#, Some(json!("a\"b"))),
            (
                r#"{"params": {"id": 5}, "id" : 12 , "v": NaN}"#,
                Some(json!(12)),
            ),
            (r#"{"jsonrpc":"2.0","id":null,"x":"\ud800"}"#, None),
            (r#"{"params": {"id": 5}}"#, None),
            ("not json", None),
        ] {
            assert_eq!(top_level_id(line.as_bytes()), id, "{line:.80}");
        }
        assert!(is_notification(br#"{"method":"x","params":[NaN]}"#));
        assert!(!is_notification(br#"{"method":"x","id":1,"params":[NaN]}"#));
    }
}
