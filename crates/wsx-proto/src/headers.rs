//! HTTP header syntax shared by the handshake and the extension negotiation (RFC 9110 §5.6):
//! tokens, optional whitespace, comma-separated lists with and without quoted strings.

use http::header::{HeaderMap, HeaderName};

/// RFC 9110 `token`: one or more tchar.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Strips optional whitespace (spaces and tabs) from both ends.
pub(crate) fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// The elements of a `#token` list (`Connection`, `Upgrade`, `Sec-WebSocket-Protocol`):
/// split at commas, trimmed, empty elements skipped. Elements are not checked to be tokens.
pub(crate) fn token_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(trim_ows).filter(|e| !e.is_empty())
}

/// Splits at every `sep` (an ASCII byte) outside double-quoted strings (with `\` escapes inside
/// them); the parts are not trimmed and may be empty.
pub(crate) fn split_outside_quotes(s: &str, sep: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in s.bytes().enumerate() {
        if quoted {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = false;
            }
        } else if b == b'"' {
            quoted = true;
        } else if b == sep {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

/// The elements of a comma-separated list whose elements may contain quoted strings
/// (`Sec-WebSocket-Extensions`): trimmed, empty ones skipped.
pub(crate) fn quoted_list(s: &str) -> impl Iterator<Item = &str> {
    split_outside_quotes(s, b',').into_iter().map(trim_ows).filter(|e| !e.is_empty())
}

/// Whether any line of the `#token` list header `name` contains `token` (ASCII
/// case-insensitive). Lines that are not visible ASCII are skipped.
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(token_list)
        .any(|t| t.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(is_token("permessage-deflate") && is_token("a!#$%&'*+-.^_`|~9"));
        for bad in ["", "a b", "a,b", "a\"", "(a)", "é", "a\t"] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn lists() {
        assert_eq!(token_list(" keep-alive ,, Upgrade\t,").collect::<Vec<_>>(), ["keep-alive", "Upgrade"]);
        assert_eq!(
            quoted_list(r#"a; x="1,2", b; y="q\",r" ,, c"#).collect::<Vec<_>>(),
            [r#"a; x="1,2""#, r#"b; y="q\",r""#, "c"]
        );
        assert_eq!(split_outside_quotes("a;b=\";\";", b';'), ["a", "b=\";\"", ""]);
        let mut map = HeaderMap::new();
        map.append(http::header::CONNECTION, "keep-alive".parse().unwrap());
        map.append(http::header::CONNECTION, "foo, UPGRADE".parse().unwrap());
        assert!(has_token(&map, &http::header::CONNECTION, "upgrade"));
        assert!(!has_token(&map, &http::header::CONNECTION, "close"));
        assert!(!has_token(&map, &http::header::UPGRADE, "websocket"));
    }
}
