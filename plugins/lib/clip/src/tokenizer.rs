//! CLIP's byte-level BPE tokenizer, reproducing transformers' `CLIPTokenizerFast` (the
//! `tokenizers` pipeline that `CLIPConverter` builds):
//!
//! 1. special tokens (`<|startoftext|>`, `<|endoftext|>`) are split out of the raw text;
//! 2. normalizer: NFC, runs of whitespace to one space, lowercase;
//! 3. pre-tokenizer: CLIP's pattern (`'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`),
//!    whitespace dropped, then GPT-2's byte-to-unicode mapping;
//! 4. BPE with the `</w>` end-of-word suffix, lowest merge rank first;
//! 5. `<|startoftext|> … <|endoftext|>`, truncated and padded to a fixed length.
//!
//! Why not the `tokenizers` crate: it would bring ~40 dependencies (rayon, onig or fancy-regex,
//! derive_builder, …) for the one pipeline CLIP uses, which fits in this file. The second
//! `ByteLevel` pre-tokenizer of that pipeline splits with GPT-2's pattern; on pieces CLIP's
//! pattern has already produced (letter runs, single digits, punctuation runs, contractions,
//! never whitespace) it never splits further, so it is omitted.

use std::collections::HashMap;
use std::path::Path;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::error::{ClipError, Result};

/// CLIP's pre-tokenizer pattern (the special tokens are split out before it runs).
const CLIP_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
const END_OF_WORD: &str = "</w>";

/// How [`ClipTokenizer::encode_batch`] pads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Every sequence to `max_length` (`padding="max_length"`): what CLIP was trained with.
    MaxLength,
    /// To the longest sequence of the batch (`padding=True`, what FusionBench uses for the
    /// zero-shot heads).
    Longest,
}

/// CLIP's BPE tokenizer.
#[derive(Clone, Debug)]
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    /// `(left id, right id)` to `(rank, merged id)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    byte_encoder: [char; 256],
    /// Split out of the raw text before normalization, longest first.
    special_tokens: Vec<(String, u32)>,
    pattern: Regex,
    whitespace: Regex,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    unk_id: u32,
}

#[derive(Deserialize)]
struct TokenizerJson {
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
    model: BpeModel,
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
}

#[derive(Deserialize)]
struct BpeModel {
    #[serde(rename = "type")]
    kind: String,
    vocab: HashMap<String, u32>,
    merges: Vec<MergeEntry>,
    end_of_word_suffix: Option<String>,
    unk_token: Option<String>,
}

/// tokenizers wrote merges as `"a b"` before 0.20 and as `["a", "b"]` since.
#[derive(Deserialize)]
#[serde(untagged)]
enum MergeEntry {
    Joined(String),
    Pair(String, String),
}

impl ClipTokenizer {
    /// Loads the tokenizer of a checkpoint directory: `tokenizer.json` when present, else
    /// `vocab.json` + `merges.txt`; the padding token comes from `tokenizer_config.json` when
    /// present (else `<|endoftext|>`, `CLIPTokenizer`'s default).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = dir.join("tokenizer_config.json");
        let config = config.is_file().then_some(config);
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            Self::from_tokenizer_json(&json, config.as_deref())
        } else {
            Self::from_vocab_merges(
                &dir.join("vocab.json"),
                &dir.join("merges.txt"),
                config.as_deref(),
            )
        }
    }

    /// Loads from a `tokenizers` file (and optionally `tokenizer_config.json`).
    pub fn from_tokenizer_json(path: &Path, tokenizer_config: Option<&Path>) -> Result<Self> {
        let text = read(path)?;
        let json: TokenizerJson =
            serde_json::from_str(&text).map_err(|source| ClipError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let bad = |message: String| ClipError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        if json.model.kind != "BPE" {
            return Err(bad(format!(
                "model type is {:?}, expected \"BPE\"",
                json.model.kind
            )));
        }
        // The suffix is what sets CLIP's BPE apart from GPT-2's; without it this is not a
        // CLIP tokenizer and the pipeline here would be wrong.
        if json.model.end_of_word_suffix.as_deref() != Some(END_OF_WORD) {
            return Err(bad(format!(
                "end_of_word_suffix is {:?}, expected {END_OF_WORD:?} (not a CLIP tokenizer)",
                json.model.end_of_word_suffix
            )));
        }
        let merges = json
            .model
            .merges
            .into_iter()
            .map(|m| match m {
                MergeEntry::Pair(a, b) => Ok((a, b)),
                MergeEntry::Joined(s) => {
                    split_merge(&s).ok_or_else(|| bad(format!("malformed merge {s:?}")))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let special: Vec<(String, u32)> = json
            .added_tokens
            .into_iter()
            .map(|t| (t.content, t.id))
            .collect();
        let unk = json.model.unk_token.unwrap_or_else(|| EOS.to_string());
        Self::build(
            path,
            json.model.vocab,
            merges,
            special,
            &unk,
            tokenizer_config,
        )
    }

    /// Loads from `vocab.json` and `merges.txt` (and optionally `tokenizer_config.json`), as
    /// the slow `CLIPTokenizer` does.
    pub fn from_vocab_merges(
        vocab_path: &Path,
        merges_path: &Path,
        tokenizer_config: Option<&Path>,
    ) -> Result<Self> {
        let vocab: HashMap<String, u32> =
            serde_json::from_str(&read(vocab_path)?).map_err(|source| ClipError::Json {
                path: vocab_path.to_path_buf(),
                source,
            })?;
        let text = read(merges_path)?;
        let merges = text
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(|l| {
                split_merge(l).ok_or_else(|| ClipError::Tokenizer {
                    path: merges_path.to_path_buf(),
                    message: format!("malformed merge line {l:?}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let special = [BOS, EOS]
            .iter()
            .filter_map(|t| vocab.get(*t).map(|&id| (t.to_string(), id)))
            .collect();
        Self::build(vocab_path, vocab, merges, special, EOS, tokenizer_config)
    }

    fn build(
        path: &Path,
        vocab: HashMap<String, u32>,
        merges: Vec<(String, String)>,
        mut special_tokens: Vec<(String, u32)>,
        unk: &str,
        tokenizer_config: Option<&Path>,
    ) -> Result<Self> {
        let bad = |message: String| ClipError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let id_of = |token: &str| -> Result<u32> {
            vocab
                .get(token)
                .copied()
                .or_else(|| {
                    special_tokens
                        .iter()
                        .find(|(t, _)| t == token)
                        .map(|&(_, id)| id)
                })
                .ok_or_else(|| bad(format!("token {token:?} is not in the vocabulary")))
        };
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let merged = format!("{a}{b}");
            let ids = (id_of(a)?, id_of(b)?);
            let merged_id = id_of(&merged)?;
            // The first occurrence of a pair wins, as in tokenizers.
            merge_map.entry(ids).or_insert((rank as u32, merged_id));
        }
        let pad = match tokenizer_config {
            Some(p) => read_special_token(p, "pad_token")?,
            None => None,
        };
        let (bos_id, eos_id) = (id_of(BOS)?, id_of(EOS)?);
        let pad_id = id_of(pad.as_deref().unwrap_or(EOS))?;
        let unk_id = id_of(unk)?;
        special_tokens.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        Ok(Self {
            vocab,
            merges: merge_map,
            byte_encoder: bytes_to_unicode(),
            special_tokens,
            pattern: Regex::new(CLIP_PATTERN).expect("the CLIP pattern is a valid regex"),
            whitespace: Regex::new(r"\s+").expect("a valid regex"),
            bos_id,
            eos_id,
            pad_id,
            unk_id,
        })
    }

    /// Id of `<|startoftext|>`.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// Id of `<|endoftext|>`.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Id used for padding.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of a vocabulary entry or special token.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied().or_else(|| {
            self.special_tokens
                .iter()
                .find(|(t, _)| t == token)
                .map(|&(_, id)| id)
        })
    }

    /// The ids of `text` without `<|startoftext|>` / `<|endoftext|>` around them.
    pub fn encode_content(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special token; at a tie the longest (the list is sorted so).
            let next = self
                .special_tokens
                .iter()
                .filter_map(|(t, id)| rest.find(t.as_str()).map(|pos| (pos, t.len(), *id)))
                .min_by_key(|&(pos, _, _)| pos);
            match next {
                Some((pos, len, id)) => {
                    self.encode_plain(&rest[..pos], &mut ids);
                    ids.push(id);
                    rest = &rest[pos + len..];
                }
                None => {
                    self.encode_plain(rest, &mut ids);
                    break;
                }
            }
        }
        ids
    }

    /// `<|startoftext|>`, the ids of `text`, `<|endoftext|>`; neither truncated nor padded.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.bos_id];
        ids.extend(self.encode_content(text));
        ids.push(self.eos_id);
        ids
    }

    /// Tokenizes a batch: each text becomes `<|startoftext|> … <|endoftext|>`, its content
    /// truncated so the whole fits in `max_length` (CLIP's context is 77), then padded with
    /// the padding id per `padding`, with `attention_mask` 1 on real tokens.
    pub fn encode_batch(
        &self,
        texts: &[&str],
        padding: Padding,
        max_length: usize,
    ) -> Result<TokenBatch> {
        if max_length < 2 {
            return Err(ClipError::input(
                "ClipTokenizer::encode_batch",
                format!(
                    "max_length {max_length} leaves no room for <|startoftext|> and <|endoftext|>"
                ),
            ));
        }
        let sequences: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| {
                let mut content = self.encode_content(t);
                content.truncate(max_length - 2);
                let mut ids = Vec::with_capacity(content.len() + 2);
                ids.push(self.bos_id);
                ids.extend(content);
                ids.push(self.eos_id);
                ids
            })
            .collect();
        let seq_len = match padding {
            Padding::MaxLength => max_length,
            Padding::Longest => sequences.iter().map(Vec::len).max().unwrap_or(2),
        };
        let mut input_ids = Vec::with_capacity(texts.len() * seq_len);
        let mut attention_mask = Vec::with_capacity(texts.len() * seq_len);
        for ids in &sequences {
            input_ids.extend_from_slice(ids);
            input_ids.resize(input_ids.len() + seq_len - ids.len(), self.pad_id);
            attention_mask.extend(std::iter::repeat_n(1, ids.len()));
            attention_mask.extend(std::iter::repeat_n(0, seq_len - ids.len()));
        }
        TokenBatch::new(input_ids, attention_mask, texts.len(), seq_len)
    }

    /// Normalizes, pre-tokenizes and BPE-encodes text that holds no special token.
    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let nfc: String = text.nfc().collect();
        let spaced = self.whitespace.replace_all(&nfc, " ");
        // Char by char, like tokenizers' Lowercase (no final-sigma rule of str::to_lowercase).
        let lower: String = spaced.chars().flat_map(char::to_lowercase).collect();
        for piece in self.pattern.find_iter(&lower) {
            let mapped: Vec<char> = piece
                .as_str()
                .bytes()
                .map(|b| self.byte_encoder[b as usize])
                .collect();
            self.bpe(&mapped, ids);
        }
    }

    /// BPE of one pre-token (already byte-mapped): start from characters, the last one with
    /// `</w>`, and repeatedly merge the adjacent pair of lowest rank (leftmost first).
    fn bpe(&self, chars: &[char], ids: &mut Vec<u32>) {
        let Some(last) = chars.len().checked_sub(1) else {
            return;
        };
        let mut word: Vec<u32> = chars
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let symbol = if i == last {
                    format!("{c}{END_OF_WORD}")
                } else {
                    c.to_string()
                };
                self.vocab.get(&symbol).copied().unwrap_or(self.unk_id)
            })
            .collect();
        loop {
            let best = word
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.merges
                        .get(&(w[0], w[1]))
                        .map(|&(rank, id)| (rank, i, id))
                })
                .min();
            let Some((_, i, merged)) = best else { break };
            word[i] = merged;
            word.remove(i + 1);
        }
        ids.extend(word);
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ClipError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn split_merge(line: &str) -> Option<(String, String)> {
    let (a, b) = line.split_once(' ')?;
    (!a.is_empty() && !b.is_empty() && !b.contains(' ')).then(|| (a.to_string(), b.to_string()))
}

/// A special token of `tokenizer_config.json`: a string, or an `AddedToken` object with
/// `content`.
fn read_special_token(path: &Path, key: &str) -> Result<Option<String>> {
    let value: Value = serde_json::from_str(&read(path)?).map_err(|source| ClipError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(match value.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    })
}

/// GPT-2's reversible byte-to-unicode table: printable bytes map to themselves, the rest to
/// code points from 256 up, so every byte string becomes a string of visible characters.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(c).expect("below 0x200, always a valid char");
    }
    table
}

/// A batch of token sequences of equal length: the text tower's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBatch {
    /// `[batch, seq]` token ids, row-major.
    pub input_ids: Vec<u32>,
    /// `[batch, seq]`: 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Number of sequences.
    pub batch_size: usize,
    /// Length of every sequence.
    pub seq_len: usize,
}

impl TokenBatch {
    /// Builds a batch, checking that both buffers hold `batch_size * seq_len` values.
    pub fn new(
        input_ids: Vec<u32>,
        attention_mask: Vec<u32>,
        batch_size: usize,
        seq_len: usize,
    ) -> Result<Self> {
        let n = batch_size * seq_len;
        if input_ids.len() != n || attention_mask.len() != n {
            return Err(ClipError::input(
                "TokenBatch::new",
                format!(
                    "{} input ids and {} mask values for a batch of {batch_size}x{seq_len}",
                    input_ids.len(),
                    attention_mask.len()
                ),
            ));
        }
        Ok(Self {
            input_ids,
            attention_mask,
            batch_size,
            seq_len,
        })
    }

    /// The ids of sequence `b`.
    pub fn ids(&self, b: usize) -> &[u32] {
        &self.input_ids[b * self.seq_len..(b + 1) * self.seq_len]
    }

    /// The mask of sequence `b`.
    pub fn mask(&self, b: usize) -> &[u32] {
        &self.attention_mask[b * self.seq_len..(b + 1) * self.seq_len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[0], 'Ā');
    }

    #[test]
    fn merge_lines_split_on_one_space() {
        assert_eq!(split_merge("t h"), Some(("t".into(), "h".into())));
        assert_eq!(split_merge("th e</w>"), Some(("th".into(), "e</w>".into())));
        assert_eq!(split_merge("nospace"), None);
    }
}
