//! Generated tokens -> text pieces: incremental decoding that only hands out valid
//! UTF-8 (a token that ends inside a multi-byte character waits for the next), and stop
//! sequences matched across token boundaries (text that may be the start of a stop
//! sequence is held back until it is known not to be).

use crate::error::Result;
use crate::tokenizer::Tokenizer;

pub(crate) struct TextTracker {
    tokenizer: Option<Tokenizer>,
    ids: Vec<u32>,
    /// Decoding restarts at `prefix` (context for the tokenizer's spacing rules);
    /// `read` marks the tokens already turned into text.
    prefix: usize,
    read: usize,
    stop: Vec<String>,
    /// Decoded text not handed out yet (a possible start of a stop sequence).
    pending: String,
    /// Tokens pushed since the last piece was handed out.
    unsent: Vec<u32>,
    /// The stop sequence that matched.
    pub(crate) stopped: Option<String>,
}

/// Text and the tokens it came from.
pub(crate) struct Piece {
    pub(crate) text: String,
    pub(crate) token_ids: Vec<u32>,
}

impl TextTracker {
    pub(crate) fn new(tokenizer: Option<Tokenizer>, stop: Vec<String>) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            stop,
            pending: String::new(),
            unsent: Vec::new(),
            stopped: None,
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.tokenizer {
            Some(t) => t.decode(ids, true),
            None => Ok(String::new()),
        }
    }

    /// Adds a generated token; returns the text it completes, if any. After a stop
    /// sequence matched (`stopped` is set) the text up to it is returned and nothing more.
    pub(crate) fn push(&mut self, id: u32) -> Result<Option<Piece>> {
        self.ids.push(id);
        self.unsent.push(id);
        let before = self.decode(&self.ids[self.prefix..self.read])?;
        let after = self.decode(&self.ids[self.prefix..])?;
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') && after.starts_with(&before) {
            self.pending.push_str(&after[before.len()..]);
            self.prefix = self.read;
            self.read = self.ids.len();
        } else if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            // The tokenizer rewrote earlier text (rare): decode from the start instead.
            let all_before = self.decode(&self.ids[..self.read])?;
            let all = self.decode(&self.ids)?;
            if let Some(tail) = all.get(all_before.len()..) {
                self.pending.push_str(tail);
            }
            self.prefix = self.read;
            self.read = self.ids.len();
        }
        Ok(self.release(false))
    }

    /// The text still held back once generation ends (an unfinished character or a
    /// partial stop sequence that never completed).
    pub(crate) fn finish(&mut self) -> Result<Option<Piece>> {
        if self.stopped.is_none() && self.read < self.ids.len() {
            let before = self.decode(&self.ids[self.prefix..self.read])?;
            let after = self.decode(&self.ids[self.prefix..])?;
            if let Some(tail) = after.get(before.len()..) {
                self.pending.push_str(tail);
            }
            self.read = self.ids.len();
        }
        Ok(self.release(true))
    }

    /// Hands out the pending text that cannot belong to a stop sequence.
    fn release(&mut self, end: bool) -> Option<Piece> {
        if self.stopped.is_some() {
            return None;
        }
        let hit = self
            .stop
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|&(at, s)| (at, std::cmp::Reverse(s.len())));
        let cut = if let Some((at, s)) = hit {
            self.stopped = Some(s.clone());
            at
        } else if end {
            self.pending.len()
        } else {
            self.held_from()
        };
        let rest = self.pending.split_off(cut);
        let text = std::mem::replace(&mut self.pending, rest);
        if self.stopped.is_some() {
            self.pending.clear();
        }
        if text.is_empty() && !(end || self.stopped.is_some()) {
            return None;
        }
        let token_ids = std::mem::take(&mut self.unsent);
        if text.is_empty() && token_ids.is_empty() {
            return None;
        }
        Some(Piece { text, token_ids })
    }

    /// Start of the longest suffix of `pending` that begins some stop sequence.
    fn held_from(&self) -> usize {
        let p = &self.pending;
        (0..p.len())
            .filter(|&i| p.is_char_boundary(i))
            .find(|&i| self.stop.iter().any(|s| s.starts_with(&p[i..])))
            .unwrap_or(p.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The byte-level tokenizer: token id = byte.
    fn bytes(s: &str) -> Vec<u32> {
        s.bytes().map(u32::from).collect()
    }

    fn run(text: &str, stop: &[&str]) -> (Vec<String>, String, Option<String>) {
        let tok = Tokenizer::byte_level().unwrap();
        let mut t = TextTracker::new(Some(tok), stop.iter().map(|s| s.to_string()).collect());
        let mut pieces = Vec::new();
        for id in bytes(text) {
            if let Some(p) = t.push(id).unwrap() {
                pieces.push(p.text);
            }
            if t.stopped.is_some() {
                break;
            }
        }
        if let Some(p) = t.finish().unwrap() {
            pieces.push(p.text);
        }
        let all = pieces.concat();
        (pieces, all, t.stopped.clone())
    }

    #[test]
    fn multibyte_characters_come_out_whole() {
        let (pieces, all, _) = run("aé€😀b", &[]);
        assert_eq!(all, "aé€😀b");
        assert_eq!(pieces, ["a", "é", "€", "😀", "b"]);
    }

    #[test]
    fn stop_sequences_spanning_tokens_end_the_text_before_them() {
        let (pieces, all, stopped) = run("Hello\n\nUser: hi", &["\n\nUser:"]);
        assert_eq!(all, "Hello");
        assert_eq!(stopped.as_deref(), Some("\n\nUser:"));
        // "\n" and "\n\n" were held back (they start the stop), never handed out.
        assert!(pieces.iter().all(|p| !p.contains('\n')));
        // A partial match that does not complete is released.
        let (_, all, stopped) = run("a\n\nb", &["\n\nUser:"]);
        assert_eq!((all.as_str(), stopped), ("a\n\nb", None));
        // The first sequence to complete ends generation.
        let (_, all, stopped) = run("xyzabc", &["abc", "yz"]);
        assert_eq!((all.as_str(), stopped.as_deref()), ("x", Some("yz")));
        let (_, all, stopped) = run("xyzabc", &["abc", "yz", "y"]);
        assert_eq!((all.as_str(), stopped.as_deref()), ("x", Some("y")));
    }
}
