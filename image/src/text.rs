//! Strings that come from a registry (error messages, media types, URLs, header values,
//! platform names) are untrusted: before they reach a terminal or a log, control characters
//! (C0, DEL, C1: newlines, carriage returns, escape sequences) and Unicode bidi overrides are
//! shown escaped (`\n`, `\u{1b}`), and overlong text is cut.

/// Longest registry-supplied text kept in a message, in characters.
pub const MAX_TEXT: usize = 512;

/// `s` with every control or bidi-formatting character escaped, cut at [`MAX_TEXT`] characters.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_TEXT));
    for (i, c) in s.chars().enumerate() {
        if i >= MAX_TEXT {
            out.push('…');
            break;
        }
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`clean`] without the length cut (for whole messages that embed cleaned parts).
pub fn clean_unbounded(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Bytes from the network, decoded lossily, then [`clean`]ed.
pub fn clean_bytes(b: &[u8]) -> String {
    clean(&String::from_utf8_lossy(b))
}

fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// True when `s` has nothing [`clean`] would escape.
pub fn is_clean(s: &str) -> bool {
    !s.chars().any(is_unsafe)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn control_characters_are_escaped() {
        let s = clean("ok\n\r\x1b[2J\u{9b}31m\u{202e}txt\u{7f}");
        assert!(is_clean(&s), "{s:?}");
        assert_eq!(s, "ok\\n\\r\\u{1b}[2J\\u{9b}31m\\u{202e}txt\\u{7f}");
        assert_eq!(clean("plain text: ünïcode"), "plain text: ünïcode");
        assert_eq!(clean(&"x".repeat(1000)).chars().count(), MAX_TEXT + 1);
    }
}
