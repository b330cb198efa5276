//! File sizes as a spec writes them: an exact byte count (`2132626102`), or a
//! human size (`"2.1GB"`, `"512MiB"`) that is only as precise as it was
//! written.
//!
//! The rule: a human size matches every length that rounds to it at the
//! precision of its last written digit, i.e. within half a unit of that digit
//! either way. `"2.1GB"` matches 2.05 GB to 2.15 GB (within 0.05 GB), `"2GB"`
//! 1.5 GB to 2.5 GB, `"2.00GB"` within 5 MB. A plain number, or a number with
//! the unit `B`, is an exact byte count. Decimal units (`KB MB GB TB`, and the
//! shorthands `K M G T`) are powers of 1000; binary units (`KiB MiB GiB TiB`)
//! powers of 1024; case does not matter.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a file's length must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedSize {
    /// The length written, in bytes.
    pub bytes: u64,
    /// How far (in bytes, either way) a length may be from `bytes` and still
    /// match: 0 for an exact byte count.
    pub tolerance: u64,
    /// The size as the spec wrote it.
    pub text: String,
}

impl ExpectedSize {
    /// Exactly `bytes` bytes.
    pub fn exact(bytes: u64) -> Self {
        ExpectedSize {
            bytes,
            tolerance: 0,
            text: bytes.to_string(),
        }
    }

    /// Whether a file of `len` bytes has this size.
    pub fn matches(&self, len: u64) -> bool {
        len.abs_diff(self.bytes) <= self.tolerance
    }

    pub fn is_exact(&self) -> bool {
        self.tolerance == 0
    }
}

impl fmt::Display for ExpectedSize {
    /// `12345` for an exact size; `2.1GB (2050000000 to 2150000000 bytes)`
    /// for a human one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_exact() {
            write!(f, "{}", self.bytes)
        } else {
            write!(
                f,
                "{} ({} to {} bytes)",
                self.text,
                self.bytes.saturating_sub(self.tolerance),
                self.bytes.saturating_add(self.tolerance)
            )
        }
    }
}

/// Why a size does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("not a size")]
    Malformed,
    #[error("more bytes than a file can have (the most is {})", u64::MAX)]
    TooLarge,
    #[error("a fraction of a byte")]
    Fraction,
}

/// Reads `"2.1GB"`, `"512 MiB"`, `"1024"`, `"1_024B"` (see the module
/// documentation for the rule).
pub fn parse(text: &str) -> Result<ExpectedSize, SizeError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number = number.replace('_', "");
    let factor: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(SizeError::Malformed),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((&number, ""));
    if whole.is_empty() && fraction.is_empty()
        || !(whole.chars().chain(fraction.chars())).all(|c| c.is_ascii_digit())
    {
        return Err(SizeError::Malformed);
    }
    // The number is mantissa / 10^decimals, kept exact in integers.
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(SizeError::TooLarge);
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| SizeError::Malformed)?
    };
    let scale = 10u128
        .checked_pow(u32::try_from(fraction.len()).map_err(|_| SizeError::Fraction)?)
        .ok_or(SizeError::Fraction)?;
    let scaled = mantissa.checked_mul(factor).ok_or(SizeError::TooLarge)?;
    if scaled % scale != 0 {
        return Err(SizeError::Fraction);
    }
    let bytes = u64::try_from(scaled / scale).map_err(|_| SizeError::TooLarge)?;
    // Half a unit of the last digit written; an exact count when that is
    // less than a byte.
    let tolerance = u64::try_from(factor / (2 * scale)).unwrap_or(u64::MAX);
    Ok(ExpectedSize {
        bytes,
        tolerance,
        text: trimmed.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_are_exact() {
        assert_eq!(parse("1024"), Ok(ExpectedSize::exact(1024)));
        assert_eq!(
            parse("1_024B").map(|s| (s.bytes, s.tolerance)),
            Ok((1024, 0))
        );
        assert!(!parse("1024").unwrap().matches(1025));
    }

    #[test]
    fn human_sizes_match_within_their_written_precision() {
        let size = parse("2.1GB").unwrap();
        assert_eq!((size.bytes, size.tolerance), (2_100_000_000, 50_000_000));
        assert!(size.matches(2_050_000_000) && size.matches(2_149_999_999));
        assert!(!size.matches(2_150_000_001) && !size.matches(2_049_999_999));
        assert_eq!(parse("2GB").unwrap().tolerance, 500_000_000);
        assert_eq!(parse("2.00GB").unwrap().tolerance, 5_000_000);
        let mib = parse("512 MiB").unwrap();
        assert_eq!((mib.bytes, mib.tolerance), (512 << 20, 1 << 19));
        assert_eq!(
            parse("2.1GB").unwrap().to_string(),
            "2.1GB (2050000000 to 2150000000 bytes)"
        );
    }

    #[test]
    fn overflow_fractions_and_nonsense_are_errors() {
        assert_eq!(parse("20000000000GB"), Err(SizeError::TooLarge));
        assert_eq!(parse("18446744073709551616"), Err(SizeError::TooLarge));
        assert_eq!(parse("18446744073709551615").map(|s| s.bytes), Ok(u64::MAX));
        assert_eq!(parse("1.5"), Err(SizeError::Fraction));
        assert_eq!(parse("1.5B"), Err(SizeError::Fraction));
        assert_eq!(parse("1.0000000001KB"), Err(SizeError::Fraction));
        for bad in ["", "big", "12 parsecs", ".", "1.2.3GB", "GB"] {
            assert_eq!(parse(bad), Err(SizeError::Malformed), "{bad}");
        }
    }
}
