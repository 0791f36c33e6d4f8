//! Markers in streamed text (`<tool_call>`, `</think>`): text arrives in arbitrary pieces, so a
//! marker may be split across them and its start must be held back until it is known.

/// The length of the longest tail of `text` that is a proper prefix of `marker`: what must be
/// held back because the next piece may complete the marker.
pub(crate) fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

/// `text` in pieces of about `size` bytes, each ending on a char boundary: how the streaming
/// readers' tests feed text the way a detokenizer might.
#[cfg(test)]
pub(crate) fn chunks(text: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = size.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_markers_are_held_back_only_while_they_may_complete() {
        assert_eq!(partial_suffix("abc<tool", "<tool_call>"), 5);
        assert_eq!(partial_suffix("abc<", "<tool_call>"), 1);
        assert_eq!(partial_suffix("abc", "<tool_call>"), 0);
        assert_eq!(partial_suffix("é<", "<tool_call>"), 1);
        assert_eq!(partial_suffix("x</thi", "</think>"), 5);
    }
}
