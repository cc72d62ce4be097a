//! What the CLI prints: JSON lines, messages, and text from peers made safe for a terminal.

use sotto_client::{ClientError, MessageKind, MessageView};
use std::io::Write as _;

/// `v` as one line of JSON in which every character a terminal could act on (C1 controls,
/// bidi overrides, invisible marks) is written as a `\uXXXX` escape, so that piping
/// `--json` output to a terminal is as safe as the plain output.
pub fn to_json<T: serde::Serialize>(v: &T) -> String {
    let raw = serde_json::to_string(v).unwrap_or_default();
    if raw.chars().all(sotto_proto::device_list::is_displayable) {
        return raw;
    }
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if sotto_proto::device_list::is_displayable(c) {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

pub fn print_messages(batch: &[MessageView], json: bool) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    for m in batch {
        let line = if json {
            to_json(m)
        } else {
            let place = match &m.group {
                Some(g) => format!("#{} ", printable(g)),
                None => String::new(),
            };
            let text = printable(&m.text);
            let body = match m.kind {
                MessageKind::Text => format!("{}: {text}", m.from.as_deref().unwrap_or("?")),
                MessageKind::Security => format!("SECURITY: {text}"),
                _ => format!("* {text}"),
            };
            format!("[{}] {place}{body}", utc(m.sent_at))
        };
        writeln!(out, "{line}").map_err(|e| ClientError::Usage(format!("stdout: {e}")))?;
    }
    out.flush()
        .map_err(|e| ClientError::Usage(format!("stdout: {e}")))
}

/// `s` as it may reach a terminal: what a peer wrote cannot move the cursor, clear the screen
/// or reverse the text around it. Control characters (but newline and tab) and invisible
/// formatting become U+FFFD.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let safe = |c: char| c == '\n' || c == '\t' || sotto_proto::device_list::is_displayable(c);
    if s.chars().all(safe) {
        std::borrow::Cow::Borrowed(s)
    } else {
        std::borrow::Cow::Owned(
            s.chars()
                .map(|c| if safe(c) { c } else { '\u{FFFD}' })
                .collect(),
        )
    }
}

/// `YYYY-MM-DD HH:MM` in UTC (civil-from-days, H. Hinnant's algorithm).
pub fn utc(ts: u64) -> String {
    let days = (ts / 86_400) as i64;
    let secs = ts % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        (secs % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn peer_text_cannot_steer_the_terminal() {
        assert_eq!(super::printable("hi\nthere\tyou"), "hi\nthere\tyou");
        assert_eq!(super::printable("مرحبا Jürgen 😀"), "مرحبا Jürgen 😀");
        assert_eq!(
            super::printable("\u{1b}[2Jgone\u{202E}txet\u{7}"),
            "\u{FFFD}[2Jgone\u{FFFD}txet\u{FFFD}"
        );
    }

    #[test]
    fn json_output_escapes_what_a_terminal_would_act_on() {
        let line = super::to_json(&serde_json::json!({ "text": "a\u{9b}31mb\u{202e}c\u{e0041}" }));
        assert_eq!(line, r#"{"text":"a\u009b31mb\u202ec\udb40\udc41"}"#);
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["text"], "a\u{9b}31mb\u{202e}c\u{e0041}");
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01 00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(super::utc(1_795_790_000), "2026-11-27 14:33");
        assert_eq!(super::utc(4_102_444_799), "2099-12-31 23:59");
    }
}
