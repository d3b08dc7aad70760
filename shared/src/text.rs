//! Text a peer chose (a program name from `Hello`, a daemon's refusal reason), made safe to
//! print: control characters and the bidirectional-override marks that reorder what a terminal
//! shows ("Trojan Source", CVE-2021-42574) become visible escapes. Used by the daemon before it
//! logs or stores a client's name and by the clients before they print text from the daemon.
//! Runs anywhere. RT: no.

use std::borrow::Cow;

/// True for a character that must not reach a terminal or a log line as it is.
fn hostile(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

/// `s` with every control character and bidi mark written as a Rust escape (`\n`, `\u{1b}`,
/// `\u{202e}`); borrowed unchanged when there is none. A backslash stays as it is: the output is
/// for reading, not for parsing back.
#[must_use]
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hostile) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hostile(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_marks_are_escaped_and_the_rest_kept() {
        assert!(matches!(escape_controls("aplay é ♪"), Cow::Borrowed("aplay é ♪")));
        assert_eq!(escape_controls("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escape_controls("x\ny\r\t\u{7}"), "x\\ny\\r\\t\\u{7}");
        assert_eq!(escape_controls("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(escape_controls("\u{9b}31m"), "\\u{9b}31m");
        for s in ["\u{0}", "\u{7f}", "\u{85}", "\u{2066}"] {
            assert!(!escape_controls(s).chars().any(hostile), "{s:?}");
        }
    }
}
