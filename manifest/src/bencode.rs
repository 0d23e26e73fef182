//! A check of bencode from the network before it is parsed: every integer within `i64`,
//! every string length within what follows it, lists and dictionaries nested at most
//! [`MAX_DEPTH`] deep. `librqbit_bencode` (9.1) reads numbers with `atoi`'s unchecked
//! `from_radix_10`: 20 digits or more overflow it, which panics in a debug build and wraps
//! to some other number in a release build (found by our `tracker_reply` fuzz target).
//! Every integer our formats use fits an `i64`, so nothing we read is refused by it.

/// Deepest nesting of lists and dictionaries accepted (ours nest three deep).
pub const MAX_DEPTH: usize = 64;

/// Why bytes are not bencode we will parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed bencode at byte {at}: {what}")]
pub struct BencodeError {
    pub at: usize,
    pub what: &'static str,
}

/// Checks the first bencoded value of `b` (what follows it is left to the parser).
pub fn check(b: &[u8]) -> Result<(), BencodeError> {
    let err = |at, what| Err(BencodeError { at, what });
    let mut i = 0;
    let mut depth = 0usize;
    loop {
        match b.get(i) {
            None => return err(i, "ends inside a value"),
            Some(b'i') => {
                let neg = b.get(i + 1) == Some(&b'-');
                let start = i + 1 + neg as usize;
                let (v, n) = digits(b, start);
                let end = start + n;
                match v {
                    _ if n == 0 => return err(start, "integer without digits"),
                    None => return err(start, "integer too large"),
                    Some(v) if v > i64::MAX as u64 + neg as u64 => {
                        return err(start, "integer outside 64 bits")
                    }
                    Some(_) if b.get(end) != Some(&b'e') => return err(end, "unended integer"),
                    Some(_) => i = end + 1,
                }
            }
            Some(b'l' | b'd') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return err(i, "nested too deep");
                }
                i += 1;
                continue;
            }
            Some(b'e') if depth > 0 => {
                depth -= 1;
                i += 1;
            }
            Some(b'0'..=b'9') => {
                let (len, n) = digits(b, i);
                let body = i + n + 1;
                if b.get(i + n) != Some(&b':') {
                    return err(i + n, "string length without ':'");
                }
                match len {
                    Some(len) if len <= (b.len() - body) as u64 => i = body + len as usize,
                    _ => return err(i, "string longer than what follows"),
                }
            }
            Some(_) => return err(i, "not a bencode value"),
        }
        if depth == 0 {
            return Ok(());
        }
    }
}

/// The decimal number at `b[at..]` (None: past `u64`) and how many digits it has.
fn digits(b: &[u8], at: usize) -> (Option<u64>, usize) {
    let run = b
        .get(at..)
        .unwrap_or_default()
        .iter()
        .take_while(|c| c.is_ascii_digit());
    let mut v = Some(0u64);
    let mut n = 0;
    for c in run {
        v = v.and_then(|v| v.checked_mul(10)?.checked_add(u64::from(c - b'0')));
        n += 1;
    }
    (v, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_values_pass() {
        for ok in [
            &b"i0e"[..],
            b"i-9223372036854775808e",
            b"i9223372036854775807e",
            b"0:",
            b"4:spam",
            b"le",
            b"de",
            b"d3:cow3:moo4:spaml1:a1:bee",
            b"d8:intervali30e5:peers6:\x7f\x00\x00\x01\x1a\xe1e",
            // Only the first value is checked.
            b"i1etrailing",
        ] {
            assert_eq!(check(ok), Ok(()), "{}", String::from_utf8_lossy(ok));
        }
    }

    #[test]
    fn overflowing_numbers_and_deep_nesting_are_refused() {
        let what = |b: &[u8]| check(b).unwrap_err().what;
        assert_eq!(what(b"i9223372036854775808e"), "integer outside 64 bits");
        assert_eq!(what(b"i-9223372036854775809e"), "integer outside 64 bits");
        assert_eq!(what(b"i99999999999999999999999e"), "integer too large");
        assert_eq!(
            what(b"d99999999999999999999999:xe"),
            "string longer than what follows"
        );
        assert_eq!(what(b"5:abc"), "string longer than what follows");
        assert_eq!(what(b"i-e"), "integer without digits");
        assert_eq!(what(b"i12"), "unended integer");
        assert_eq!(what(b"12"), "string length without ':'");
        assert_eq!(what(b"d3:cow"), "ends inside a value");
        assert_eq!(what(b""), "ends inside a value");
        assert_eq!(what(b"e"), "not a bencode value");
        assert_eq!(what(b"x"), "not a bencode value");
        let deep = [vec![b'l'; MAX_DEPTH], vec![b'e'; MAX_DEPTH]].concat();
        assert_eq!(check(&deep), Ok(()));
        let deeper = [vec![b'l'; MAX_DEPTH + 1], vec![b'e'; MAX_DEPTH + 1]].concat();
        assert_eq!(what(&deeper), "nested too deep");
    }
}
