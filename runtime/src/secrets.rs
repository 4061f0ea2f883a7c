//! Secrets stay out of messages: one masking function (`mask`) for every line the process
//! prints that may carry client properties or librdkafka's echo of them.
//!
//! A key looks like a secret when it contains `password` or `secret`, is `sasl.jaas.config`,
//! or starts with `ssl.key.` (case-insensitive). `mask` hides, in any text:
//! - the values remembered with `remember` (the values of secret-looking keys, and of keys
//!   librdkafka does not know: a misspelled `sasl.pasword` is as secret as the real one) wherever
//!   they appear, so librdkafka's error strings (`Client config error: ... sasl.pasword hunter2`)
//!   are covered whatever their shape. Values shorter than `MIN_REMEMBERED` characters are not
//!   replaced everywhere (a one-letter value would blank every such letter), only next to a key;
//! - whatever follows a secret-looking key and a separator (`=`, `:` or whitespace).
//!
//! The remembered values are process-wide: properties are read once, at start, and every message
//! path (the command line's error line included) masks with the same set.

use std::sync::Mutex;

/// What a masked value reads as.
pub const MASK: &str = "****";
/// Shorter remembered values are masked only where they follow their key.
pub const MIN_REMEMBERED: usize = 4;

static REMEMBERED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Whether a client property's value is a secret, by its key.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.trim().to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k == "sasl.jaas.config" || k.starts_with("ssl.key.")
}

/// Masks `value` in every later `mask`.
pub fn remember(value: &str) {
    let value = value.trim();
    if value.is_empty() {
        return;
    }
    let mut r = REMEMBERED.lock().unwrap_or_else(|p| p.into_inner());
    if !r.iter().any(|v| v == value) {
        r.push(value.to_string());
        // Longest first: a value containing another is replaced whole.
        r.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}

/// `value` as a message may show it: masked when `key` looks like a secret.
pub fn shown<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret_key(key) {
        MASK
    } else {
        value
    }
}

/// `text` with every secret masked (see the module header).
pub fn mask(text: &str) -> String {
    let mut out = text.to_string();
    for v in REMEMBERED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        if v.chars().count() >= MIN_REMEMBERED {
            out = out.replace(v.as_str(), MASK);
        }
    }
    out.lines().map(mask_after_keys).collect::<Vec<_>>().join("\n")
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// One line with what follows each secret-looking key masked: after `=` or `:` the rest of the
/// line (a JAAS config holds spaces), after whitespace the next word (unquoted keys only).
fn mask_after_keys(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find(is_key_char) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(|c| !is_key_char(c)).unwrap_or(rest.len());
        let (word, after) = rest.split_at(end);
        // The end of a path (`/etc/kafka/secrets.properties: ...`) is a file name, not a key.
        let in_path = out.ends_with(['/', '\\']);
        out.push_str(word);
        rest = after;
        if in_path || !is_secret_key(word) {
            continue;
        }
        // A quoted key (`"sasl.password"`) keeps its closing quote.
        let quote = rest.len() - rest.trim_start_matches(['"', '\'', '`']).len();
        out.push_str(&rest[..quote]);
        rest = &rest[quote..];
        let gap = rest.len() - rest.trim_start().len();
        let sep = rest.trim_start().chars().next();
        match sep {
            Some('=') | Some(':') => {
                let value_at = gap + 1;
                out.push_str(&rest[..value_at]);
                if !rest[value_at..].trim().is_empty() {
                    let lead = rest[value_at..].len() - rest[value_at..].trim_start().len();
                    out.push_str(&rest[value_at..value_at + lead]);
                    out.push_str(MASK);
                }
                return out;
            }
            // `key value` (a properties line, librdkafka's `key value` echo); a quoted key
            // followed by words is prose ("`sasl.password` refused: ...").
            Some(c) if gap > 0 && quote == 0 && c != '(' => {
                out.push_str(&rest[..gap]);
                let value = &rest[gap..];
                let end = value.find(char::is_whitespace).unwrap_or(value.len());
                out.push_str(MASK);
                rest = &value[end..];
            }
            _ => {}
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_look_like_secrets() {
        for k in [
            "sasl.password",
            "SASL.PASSWORD",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "sasl.jaas.config",
            "my.secret.thing",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "sasl.username",
            "security.protocol",
            "ssl.ca.location",
            "bootstrap.servers",
            "ssl.keystore.location",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn values_after_secret_keys_are_masked_in_any_text() {
        assert_eq!(mask("sasl.password=hunter2"), "sasl.password=****");
        assert_eq!(mask("got `sasl.password: hunter2`"), "got `sasl.password: ****");
        assert_eq!(
            mask("sasl.jaas.config=org.apache.ScramLoginModule required username=\"u\" password=\"p\";"),
            "sasl.jaas.config=****"
        );
        assert_eq!(
            mask("Client config error: ssl.key.password xyz"),
            "Client config error: ssl.key.password ****"
        );
        assert_eq!(
            mask("client property `sasl.jaas.config` refused: no such property"),
            "client property `sasl.jaas.config` refused: no such property",
            "prose after a quoted key"
        );
        assert_eq!(mask("sasl.username=alice"), "sasl.username=alice", "not a secret");
        assert_eq!(
            mask("unknown key `sasl.password` (line 3)"),
            "unknown key `sasl.password` (line 3)",
            "no value follows"
        );
        assert_eq!(mask("a\nsasl.password=x\nb"), "a\nsasl.password=****\nb");
        assert_eq!(
            mask("/etc/kafka/client.secrets.properties: line 2: sasl.password=x"),
            "/etc/kafka/client.secrets.properties: line 2: sasl.password=****",
            "a file name is not a key"
        );
    }

    #[test]
    fn remembered_values_are_masked_wherever_they_appear() {
        remember("correct-horse-battery");
        remember("abc");
        let text = "KafkaError (Client config error: No such configuration property: \"sasl.pasword\" sasl.pasword correct-horse-battery)";
        let masked = mask(text);
        assert!(!masked.contains("correct-horse-battery"), "{masked}");
        assert!(masked.contains("sasl.pasword ****"), "{masked}");
        assert_eq!(mask("abc abcd"), "abc abcd", "short values only next to their key");
    }
}
