//! URL query strings as the official client writes them: keys in alphabetical order, values
//! form-encoded (protocol.md §4, transcripts README fact 4); the parameters that name a
//! namespace and a snapshot in API calls and session upgrades.

use crate::store::names::{BackupDir, BackupNamespace};

/// `a=1&b=x%2Fy` from pairs, sorted by key.
pub fn encode_query(pairs: &[(&str, String)]) -> String {
    let mut sorted: Vec<&(&str, String)> = pairs.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::new();
    for (key, value) in sorted {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&encode_component(key));
        out.push('=');
        out.push_str(&encode_component(value));
    }
    out
}

/// The query of a JSON object's parameters (strings as they are, other scalars as JSON
/// writes them), sorted by key like [`encode_query`].
pub fn json_to_query(params: &serde_json::Value) -> String {
    let Some(object) = params.as_object() else {
        return String::new();
    };
    let pairs: Vec<(&str, String)> = object
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| match value {
            serde_json::Value::String(text) => (key.as_str(), text.clone()),
            other => (key.as_str(), other.to_string()),
        })
        .collect();
    encode_query(&pairs)
}

/// Percent-encodes everything but unreserved characters.
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Decodes a form-encoded component (`+` is a space); None for broken escapes or non-UTF-8.
pub fn decode_component(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Splits `a=1&b=2` into decoded pairs; None if any part is malformed.
pub fn parse_query(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            Some((decode_component(key)?, decode_component(value)?))
        })
        .collect()
}

/// `[(name, ns)]`, or nothing for the root namespace (the official client omits it).
pub(crate) fn ns_param(name: &'static str, ns: &BackupNamespace) -> Vec<(&'static str, String)> {
    if ns.is_root() {
        Vec::new()
    } else {
        vec![(name, ns.to_string())]
    }
}

/// The parameters naming a snapshot: its namespace (if not the root), type, id and time.
pub(crate) fn snapshot_params(
    ns: &BackupNamespace,
    dir: &BackupDir,
) -> Vec<(&'static str, String)> {
    let mut params = ns_param("ns", ns);
    params.push(("backup-type", dir.group.backup_type.as_str().to_string()));
    params.push(("backup-id", dir.group.backup_id.clone()));
    params.push(("backup-time", dir.time.to_string()));
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_like_the_official_client() {
        let query = encode_query(&[
            ("wid", "1".into()),
            ("digest", "ab".into()),
            ("size", "5".into()),
            ("encoded-size", "17".into()),
        ]);
        assert_eq!(query, "digest=ab&encoded-size=17&size=5&wid=1");
    }

    #[test]
    fn json_parameters_become_a_sorted_query() {
        let params = serde_json::json!({"ns": "a/b", "dry-run": true, "keep-last": 3, "x": null});
        assert_eq!(json_to_query(&params), "dry-run=true&keep-last=3&ns=a%2Fb");
    }

    #[test]
    fn values_round_trip() {
        let text = "team/web a+b%ü";
        let encoded = encode_component(text);
        assert_eq!(encoded, "team%2Fweb%20a%2Bb%25%C3%BC");
        assert_eq!(decode_component(&encoded).unwrap(), text);
        assert_eq!(
            parse_query("ns=a%2Fb&x=").unwrap(),
            vec![("ns".into(), "a/b".into()), ("x".into(), "".into())]
        );
        assert!(parse_query("a=%zz").is_none());
        assert!(parse_query("a=%4").is_none());
    }
}
