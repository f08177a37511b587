//! Byte-level helpers shared by the loaders: reading (with transparent gzip),
//! line splitting, number parsing with file/line errors, latin-1 decoding,
//! HTML entity decoding and category-list parsing.

use std::io::Read;
use std::path::Path;

use llmrec_core::{Error, Result};

/// Reads a whole file; gzip data (magic bytes `1f 8b`) is decompressed
/// transparently. An empty file (before or after decompression) is a
/// [`Error::Parse`] at line 0 saying so, with `expected` describing the content.
pub(crate) fn read_bytes(path: &Path, expected: &str) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::parse(
                    path,
                    0,
                    format!("truncated or corrupt gzip data ({e}); expected a complete gzip file"),
                )
            })?;
        out
    } else {
        raw
    };
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Error::parse(
            path,
            0,
            format!("the file is empty; expected {expected}"),
        ));
    }
    Ok(bytes)
}

/// Non-blank lines with their 1-based line numbers; a trailing `\r` is removed.
pub(crate) fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.iter().all(|b| b.is_ascii_whitespace()))
}

/// Splits `line` on `sep` into exactly `N` fields; `Err(count)` otherwise.
pub(crate) fn fields<'a, const N: usize>(
    line: &'a [u8],
    sep: &[u8],
) -> std::result::Result<[&'a [u8]; N], usize> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut n = 0;
    let mut rest = line;
    loop {
        let pos = if sep.len() == 1 {
            rest.iter().position(|&b| b == sep[0])
        } else {
            rest.windows(sep.len()).position(|w| w == sep)
        };
        let (field, next) = match pos {
            Some(p) => (&rest[..p], Some(&rest[p + sep.len()..])),
            None => (rest, None),
        };
        if n < N {
            out[n] = field;
        }
        n += 1;
        match next {
            Some(r) => rest = r,
            None => break,
        }
    }
    if n == N { Ok(out) } else { Err(n) }
}

/// Shows bytes in an error message (lossy, shortened).
pub(crate) fn show(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.chars().count() > 60 {
        let t: String = s.chars().take(60).collect();
        format!("{t}…")
    } else {
        s.into_owned()
    }
}

/// Parses a non-negative decimal integer (surrounding spaces allowed).
pub(crate) fn parse_u64(path: &Path, line: usize, field: &[u8], what: &str) -> Result<u64> {
    let t = field.trim_ascii();
    let ok = !t.is_empty() && t.len() <= 19 && t.iter().all(u8::is_ascii_digit);
    if !ok {
        return Err(Error::parse(
            path,
            line,
            format!(
                "expected a non-negative integer {what}, found `{}`",
                show(field)
            ),
        ));
    }
    Ok(t.iter()
        .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0')))
}

/// Parses a (possibly negative) integer timestamp.
pub(crate) fn parse_i64(path: &Path, line: usize, field: &[u8], what: &str) -> Result<i64> {
    let s = std::str::from_utf8(field.trim_ascii()).unwrap_or("");
    if let Ok(v) = s.parse::<i64>() {
        return Ok(v);
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v.abs() < 9.0e18 => Ok(v as i64),
        _ => Err(Error::parse(
            path,
            line,
            format!("expected an integer {what}, found `{}`", show(field)),
        )),
    }
}

/// Parses a finite number.
pub(crate) fn parse_f32(path: &Path, line: usize, field: &[u8], what: &str) -> Result<f32> {
    let s = std::str::from_utf8(field.trim_ascii()).unwrap_or("");
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(Error::parse(
            path,
            line,
            format!("expected a number {what}, found `{}`", show(field)),
        )),
    }
}

/// A MovieLens rating: an integer in 1..=5.
pub(crate) fn parse_movielens_rating(path: &Path, line: usize, field: &[u8]) -> Result<f32> {
    let v = parse_u64(path, line, field, "rating").map_err(|_| {
        Error::parse(
            path,
            line,
            format!(
                "expected an integer rating in 1..=5, found `{}`",
                show(field)
            ),
        )
    })?;
    if !(1..=5).contains(&v) {
        return Err(Error::parse(
            path,
            line,
            format!("rating {v} is out of range; expected an integer in 1..=5"),
        ));
    }
    Ok(v as f32)
}

/// Decodes latin-1 (ISO-8859-1): every byte is the char with the same code point.
pub(crate) fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Decodes one line as UTF-8, or a parse error saying UTF-8 was expected.
pub(crate) fn utf8<'a>(path: &Path, line: usize, bytes: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        Error::parse(
            path,
            line,
            format!(
                "invalid byte 0x{:02x} at column {}; expected UTF-8 text",
                bytes.get(e.valid_up_to()).copied().unwrap_or(0),
                e.valid_up_to() + 1
            ),
        )
    })
}

/// Windows-1252 code points for numeric references `&#128;`..`&#159;`, which
/// HTML decoders map this way (the Amazon metadata uses `&#153;` for ™).
const CP1252: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}',
    '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
];

fn named_entity(name: &str) -> Option<&'static str> {
    Some(match name {
        "amp" => "&",
        "quot" => "\"",
        "lt" => "<",
        "gt" => ">",
        "apos" => "'",
        // A plain space: item text feeds prompts and tokenizers.
        "nbsp" => " ",
        "reg" => "®",
        "copy" => "©",
        "trade" => "™",
        "deg" => "°",
        "bull" => "•",
        "hearts" => "♥",
        "ordm" => "º",
        "ordf" => "ª",
        "frac12" => "½",
        "frac14" => "¼",
        "frac34" => "¾",
        "eacute" => "é",
        "Eacute" => "É",
        "egrave" => "è",
        "Egrave" => "È",
        "ecirc" => "ê",
        "euml" => "ë",
        "aacute" => "á",
        "agrave" => "à",
        "acirc" => "â",
        "auml" => "ä",
        "Auml" => "Ä",
        "aring" => "å",
        "iacute" => "í",
        "icirc" => "î",
        "iuml" => "ï",
        "oacute" => "ó",
        "ocirc" => "ô",
        "ouml" => "ö",
        "Ouml" => "Ö",
        "uacute" => "ú",
        "ucirc" => "û",
        "uuml" => "ü",
        "Uuml" => "Ü",
        "ntilde" => "ñ",
        "ccedil" => "ç",
        "szlig" => "ß",
        "hellip" => "…",
        "ndash" => "–",
        "mdash" => "—",
        "lsquo" => "‘",
        "rsquo" => "’",
        "ldquo" => "“",
        "rdquo" => "”",
        "middot" => "·",
        "times" => "×",
        "micro" => "µ",
        "para" => "¶",
        "sect" => "§",
        "plusmn" => "±",
        "cent" => "¢",
        "pound" => "£",
        "euro" => "€",
        "yen" => "¥",
        _ => return None,
    })
}

fn numeric_entity(body: &str) -> Option<char> {
    let code = if let Some(hex) = body.strip_prefix('x').or_else(|| body.strip_prefix('X')) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(hex, 16).ok()?
    } else {
        if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        body.parse::<u32>().ok()?
    };
    match code {
        0 => None,
        0x80..=0x9f => Some(CP1252[(code - 0x80) as usize]),
        _ => char::from_u32(code),
    }
}

/// Decodes HTML character references: the named entities that occur in
/// Amazon metadata (`&amp; &quot; &lt; &gt; &apos; &nbsp; &reg; &trade;
/// &eacute; …`), decimal `&#39;` and hexadecimal `&#x27;` forms. Numeric
/// references 128..159 are read as Windows-1252, as browsers do. Unknown or
/// malformed references are kept as they are. Decoding is a single pass:
/// `&amp;quot;` becomes `&quot;`.
pub fn decode_html_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        // Longest reference body we know is `#x10FFFF` (8 bytes).
        let semi = after
            .char_indices()
            .take(12)
            .find(|&(_, c)| c == ';' || c == '&' || c.is_whitespace())
            .filter(|&(_, c)| c == ';')
            .map(|(i, _)| i);
        let decoded = semi.and_then(|i| {
            let body = &after[..i];
            let text = if let Some(num) = body.strip_prefix('#') {
                numeric_entity(num).map(String::from)
            } else {
                named_entity(body).map(String::from)
            };
            text.map(|t| (t, i))
        });
        match decoded {
            Some((t, i)) => {
                out.push_str(&t);
                rest = &after[i + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parses a category list: a Python-style list of quoted strings
/// (`'Beauty', 'Makeup', "Men's"`, with or without `[` `]`), or else a
/// `|`-separated list (`Animation|Children's|Comedy`). Empty entries are dropped.
pub fn parse_categories(s: &str) -> Vec<String> {
    let t = s.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(t)
        .trim();
    if t.is_empty() {
        return Vec::new();
    }
    if (t.starts_with('\'') || t.starts_with('"'))
        && let Some(v) = parse_quoted_list(t)
    {
        return v;
    }
    t.split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

fn parse_quoted_list(t: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = t.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let q = chars.next()?;
        if q != '\'' && q != '"' {
            return None;
        }
        let mut item = String::new();
        loop {
            match chars.next()? {
                '\\' => item.push(chars.next()?),
                c if c == q => break,
                c => item.push(c),
            }
        }
        let item = item.trim();
        if !item.is_empty() {
            out.push(item.to_owned());
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities() {
        assert_eq!(
            decode_html_entities("A &amp; B &quot;x&quot; &#39;y&#39; &lt;&gt; &apos;"),
            "A & B \"x\" 'y' <> '"
        );
        assert_eq!(decode_html_entities("&#x41;&#65;&#153;&#9733;"), "AA™★");
        assert_eq!(
            decode_html_entities("Caf&eacute; 3&frac12; &reg;"),
            "Café 3½ ®"
        );
        assert_eq!(decode_html_entities("a&nbsp;b"), "a b");
        assert_eq!(
            decode_html_entities("Q & A &bogus; &amp"),
            "Q & A &bogus; &amp"
        );
        assert_eq!(decode_html_entities("&amp;quot;"), "&quot;");
        assert_eq!(decode_html_entities("&#0; &#xZZ; &#;"), "&#0; &#xZZ; &#;");
        assert_eq!(decode_html_entities("no refs"), "no refs");
    }

    #[test]
    fn categories() {
        assert_eq!(
            parse_categories("'Beauty', 'Fragrance', \"Men's\", 'Cologne'"),
            ["Beauty", "Fragrance", "Men's", "Cologne"]
        );
        assert_eq!(parse_categories("['A, B', 'C']"), ["A, B", "C"]);
        assert_eq!(
            parse_categories("Animation|Children's|Comedy"),
            ["Animation", "Children's", "Comedy"]
        );
        assert!(parse_categories("  ").is_empty());
    }

    #[test]
    fn field_split() {
        assert_eq!(fields::<3>(b"1::2::3", b"::"), Ok([&b"1"[..], b"2", b"3"]));
        assert_eq!(fields::<3>(b"1::2", b"::"), Err(2));
        assert_eq!(fields::<2>(b"a\tb\tc", b"\t"), Err(3));
        assert_eq!(latin1(&[0xc1, b'k']), "Ák");
    }
}
